"""The Python side of examples/graph: smqsched's task graph, B[i] = inv(A[i]) and
C[i*n+k] = B[i] @ B[k] (reduced to its trace), plus the same graph as a plain loop
for checking. BLAS on one thread: the workers are the parallelism."""
import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402


def make_a(seed, size):
    if seed < 0:
        raise ValueError(f"no matrix for seed {seed}")
    return np.random.default_rng(seed).random((size, size)) + size * np.eye(size)


def make(items):  # batch function: (seed, size) pairs
    return [make_a(seed, size) for seed, size in items]


def inv(items):
    return [np.linalg.inv(a) for a in items]


def products(items):
    return [float(np.trace(a @ b)) for a, b in items]


def loop_checksum(n, size):
    b = [np.linalg.inv(make_a(i, size)) for i in range(n)]
    return sum(float(np.trace(b[i] @ b[k])) for i in range(n) for k in range(n))
