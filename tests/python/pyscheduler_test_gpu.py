"""Python side of tests/test_cuda.cpp and the GPU benchmark: batched matrix products
of DLPack tensors uploaded by C++ (each item is one [2, n, n] float32 tensor: A and B)."""


def available(library):
    """True when `library` (torch or cupy) imports and sees a CUDA device."""
    try:
        if library == "torch":
            import torch

            return torch.cuda.is_available()
        if library == "cupy":
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # not installed, or no driver
        return False
    raise ValueError(f"unknown library {library!r}")


def torch_matmul(items):
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # full float32 products
    pairs = torch.stack([torch.from_dlpack(t) for t in items])  # each import waits for its upload
    return list(torch.bmm(pairs[:, 0], pairs[:, 1]))


def cupy_matmul(items):
    import cupy

    pairs = cupy.stack([cupy.from_dlpack(t) for t in items])
    return list(cupy.matmul(pairs[:, 0], pairs[:, 1]))


def to_torch(items):
    """Imports C++ tensors into torch once (for the benchmark's compute-only limit)."""
    import torch

    return [torch.from_dlpack(t) for t in items]


def synchronize():
    import torch

    torch.cuda.synchronize()
