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


def process_driver_seconds(procs, items, n):
    """The raw limit of process workers, without the pipeline: a Python thread per
    worker proxy in `procs` (detail::start_process_worker's, what a Process handler's
    executor calls), each calling it back to back, small_numpy([n]) each time, items
    calls in all. Seconds for the calls; closes the workers."""
    import threading
    import time

    try:
        for p in procs:
            p([n])  # warm

        def drive(p, count):
            for _ in range(count):
                p([n])

        threads = [threading.Thread(target=drive, args=(p, items // len(procs))) for p in procs]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start
    finally:
        for p in procs:
            p.close()
