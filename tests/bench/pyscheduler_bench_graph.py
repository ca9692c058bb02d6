"""Python side of the task-graph benchmarks (bench_graph.cpp) and of their Python
comparisons (compare_graph.py): smqsched's example, B[i] = inv(A[i]) and
C[i*100+k] = B[i] @ B[k], each C reduced to its trace in the same task (keeping
10 000 products of 100x100 would take 800 MB). BLAS is pinned to one thread (before
numpy loads), so that the parallelism measured is the scheduler's."""
import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

SIZE = 100


def make_a(seed):
    """A[seed]: random, with a heavy diagonal (well conditioned, so inv is stable)."""
    return np.random.default_rng(seed).random((SIZE, SIZE)) + SIZE * np.eye(SIZE)


def inv_one(a):
    return np.linalg.inv(a)


def trace_of_product(a, b):
    return float(np.trace(a @ b))


# Batch functions for the handlers.
def inv(items):
    return [inv_one(a) for a in items]


def products(items):
    return [trace_of_product(a, b) for a, b in items]


def identity(items):
    return items


# A gate that keeps an input item in Python until the benchmark opens it, so that
# every dependent really waits (BM_EdgeFanOut).
import threading  # noqa: E402

_gate = threading.Event()


def gated(items):
    _gate.wait()
    _gate.clear()
    return items


def open_gate():
    _gate.set()


def spin(items):
    """CPU-bound pure Python per item: sum of squares below n (BM_PauseResume)."""
    return [sum(i * i for i in range(n)) for n in items]
