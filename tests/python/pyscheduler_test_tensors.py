"""Python side of tests/test_dlpack.cpp: numpy consumers and producers of DLPack tensors."""
import gc
import weakref

import numpy as np

_tracked = None


def describe(items):
    """Imports each pyscheduler.Tensor with numpy (no copy) and reports what it sees."""
    out = []
    for t in items:
        a = np.from_dlpack(t)
        out.append((str(a.dtype), list(a.shape), a.ctypes.data, a.astype("float64").ravel().tolist()))
    return out


def echo(items):
    """Imports each tensor with numpy and returns the arrays themselves."""
    return [np.from_dlpack(t) for t in items]


def doubled(items):
    """A new numpy array per item: 2 * input, as float32."""
    return [(np.from_dlpack(t) * 2).astype(np.float32) for t in items]


def views(_=None):
    """Non-contiguous views of one 4x6 int32 array (values 0..23)."""
    a = np.arange(24, dtype=np.int32).reshape(4, 6)
    return {"every_other_column": a[:, ::2], "transposed": a.T, "window": a[1:3, 2:5], "reversed_rows": a[::-1]}


def make_tracked(n):
    """A fresh array 0..n-1 (float64) that only the caller references; a weakref tracks it."""
    global _tracked
    a = np.arange(n, dtype=np.float64)
    _tracked = weakref.ref(a)
    return a


def tracked_alive():
    gc.collect()
    return _tracked is not None and _tracked() is not None


def unsupported_datetime(_=None):
    return np.array(["2020-01-01"], dtype="datetime64[D]")


def export_twice(t):
    """Calls __dlpack__ twice on one pyscheduler.Tensor: the second must raise BufferError."""
    first = t.__dlpack__()
    try:
        t.__dlpack__()
    except BufferError as e:
        return (type(first).__name__, str(e), t.__dlpack_device__())
    return (type(first).__name__, "", t.__dlpack_device__())
