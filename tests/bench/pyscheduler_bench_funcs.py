"""Python functions the benchmarks call: as cheap as possible, so the figures show
pyscheduler's own overhead against the raw pybind11 call of the same function."""
import threading


def identity(x):
    return x


def identity_batch(items):
    return items


def double_batch(items):
    return [2 * x for x in items]


def sum_batch(items):
    return [x + 1 for x in items]


_gate = threading.Event()


def gated_identity(items):
    """Blocks (releasing the GIL) until open_gate(): keeps items pending."""
    _gate.wait()
    return items


def open_gate():
    _gate.set()


def close_gate():
    _gate.clear()


def spin_one(n):
    """CPU-bound pure Python (no extension modules: loads in own-GIL sub-interpreters)."""
    return sum(i * i for i in range(n))


def spin(items):
    return [spin_one(n) for n in items]
