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


def process_driver_seconds(host, items, n, workers):
    """The raw limit of process workers, without the pipeline: `workers` Python threads,
    each calling its own worker process back to back through the host module's
    ProcessWorker (what a Process handler's executor calls), small_numpy([n]) each time,
    items calls in all. Seconds for the calls."""
    import threading
    import time

    procs = [host.ProcessWorker(host.spawn, "driver", i, __name__, "small_numpy", 0, 0.0) for i in range(workers)]
    try:
        for p in procs:
            p([n])  # started and warm

        def drive(p, count):
            for _ in range(count):
                p([n])

        threads = [threading.Thread(target=drive, args=(p, items // workers)) for p in procs]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - start
    finally:
        for p in procs:
            p.close()
