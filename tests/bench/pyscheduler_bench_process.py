"""Functions for the process-worker benchmarks (bench_process.cpp) and for Python's own
multiprocessing on the same work (compare_process.py). BLAS is pinned to one thread
(before numpy loads), so that the parallelism measured is the workers'."""
import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

_x = np.arange(16, dtype=np.float64)


def small_numpy_one(n):
    """Python-heavy numpy: n tiny numpy calls, the GIL held throughout."""
    acc = 0.0
    for _ in range(n):
        acc += float(np.dot(_x, _x + 1.0))
    return acc


def small_numpy(items):
    return [small_numpy_one(n) for n in items]


def echo_one(x):
    return x


def echo(items):
    return items


def plus_one_one(a):
    return a + 1.0


def plus_one(items):
    return [a + 1.0 for a in items]
