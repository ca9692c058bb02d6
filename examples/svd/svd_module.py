import numpy as np


def largest_singular_values(matrices):
    """One call per batch: a stacked (batched) SVD of up to batch_size matrices."""
    return list(np.linalg.svd(np.stack(matrices), compute_uv=False)[:, 0])


def plain_loop(n, size, seed):
    """The same work as the pipeline, as a plain single-threaded Python loop."""
    rng = np.random.default_rng(seed)
    return [float(np.linalg.svd(rng.uniform(-1.0, 1.0, (size, size)), compute_uv=False)[0]) for _ in range(n)]
