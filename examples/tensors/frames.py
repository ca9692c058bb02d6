"""Python side of the tensors example: grayscale conversion of batches of RGB frames."""
import numpy as np

_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def grayscale(frames):
    """frames: pyscheduler.Tensor objects (H x W x 3, uint8). Returns, per frame, the
    float32 gray image (a new array, handed back to C++ without a copy) and the address
    numpy saw the frame at (to show it did not copy the C++ buffer)."""
    out = []
    for t in frames:
        rgb = np.from_dlpack(t)  # zero copy: numpy views the C++ vector (read-only)
        out.append((rgb @ _WEIGHTS, rgb.ctypes.data))
    return out


def torch_available():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def grayscale_torch(frames):
    """The same on the GPU: frames are CUDA tensors uploaded by C++."""
    import torch

    weights = torch.tensor(_WEIGHTS, device="cuda")
    return [torch.from_dlpack(t).to(torch.float32) @ weights for t in frames]
