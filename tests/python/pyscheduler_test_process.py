"""Run by InterpreterKind::Process workers in tests/test_process.cpp: each item is a
tuple (operation, argument) and the function returns one result per item."""
import ctypes
import os
import sys
import time

_kept = []


def _say_started(path):
    """Writes this process's pid into the file `path`, all at once."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)


def _one(op, arg):
    if op == "square":
        return arg * arg
    if op == "pid":
        return os.getpid()
    if op == "environment":
        return (sys.prefix, sys.executable, list(sys.path))
    if op == "hang":  # says it started, then sleeps
        _say_started(arg)
        time.sleep(600)
        return 0
    if op == "started_sleep":  # says it started, then sleeps a second
        _say_started(arg)
        time.sleep(1.0)
        return 1.0
    if op == "sleep":
        time.sleep(arg)
        return arg
    if op == "segfault":
        return ctypes.string_at(0)
    if op == "exit":
        os._exit(arg)
    if op == "raise":
        raise ValueError(f"bad item {arg}")
    if op == "error_item":  # the @pyscheduler.batched protocol: this item alone fails
        return KeyError(arg)
    if op == "echo":
        return arg
    if op == "filled":  # 1 MiB of the byte arg % 256: a result that goes through the worker's segment
        return bytes([arg % 256]) * (1 << 20)
    if op == "slow_sum":  # a numpy array: its sum, read after a while (the call behind it is queued by then)
        time.sleep(0.05)
        return float(arg.sum())
    if op == "double":  # a numpy array: twice it
        return arg * 2
    if op == "keep":  # keeps its input array (a view of shared memory) and returns a copy
        _kept.append(arg)
        return arg.copy()
    if op == "kept_sums":  # the sums of every array kept so far
        return [float(a.sum()) for a in _kept]
    if op == "unpicklable":
        return lambda: None
    raise RuntimeError(f"unknown operation {op!r}")


def run(batch):
    return [_one(op, arg) for op, arg in batch]


def run_or_error(batch):
    """As run, but an item that raises fails alone (its exception is its result)."""
    results = []
    for op, arg in batch:
        try:
            results.append(_one(op, arg))
        except Exception as e:
            results.append(e)
    return results


not_callable = 42


def describe(batch):
    """Each item as (its type's name, its sum): what a C++ tensor arrives as."""
    return [(type(a).__name__, float(a.sum())) for a in batch]


class Wrapped:
    """A tensor type of its own that only DLPack can move (pickling it refuses), as a
    torch tensor stands for: it must travel as its buffer and come back as a Wrapped."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, stream=None, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()

    def __reduce__(self):
        raise TypeError("Wrapped travels through DLPack only")


def from_dlpack(x):
    """As torch.from_dlpack: a Wrapped viewing x's memory."""
    import numpy
    return Wrapped(numpy.from_dlpack(x))


def wrapped(batch):
    """Each item n as a Wrapped of numpy.arange(n) (float64)."""
    import numpy
    return [Wrapped(numpy.arange(n, dtype=numpy.float64)) for n in batch]
