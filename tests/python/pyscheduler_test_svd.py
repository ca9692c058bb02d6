"""The seed README's batching example: random matrices and their SVDs, with numpy."""
import numpy as np


def make_matrices(seeds):
    return [np.random.default_rng(seed).standard_normal((100, 100)) for seed in seeds]


def singular_values(matrices):
    return [np.linalg.svd(m, compute_uv=False) for m in matrices]


def frobenius_squared(matrices):
    return [float(np.sum(m * m)) for m in matrices]
