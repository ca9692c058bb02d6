"""numpy work for the worker-pool benchmark: one 256x256 matrix product per item.
numpy's BLAS call releases the GIL, so Main workers overlap on it. BLAS is pinned to
one thread (before numpy loads), so that the parallelism measured is the workers'."""
import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

_a = np.random.default_rng(0).random((256, 256))


def matmul(items):
    return [float((_a @ _a)[0, 0]) for _ in items]
