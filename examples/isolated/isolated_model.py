"""A numpy "model" served by InterpreterKind::Process workers (examples/isolated).

predict() normalizes each input vector; a vector whose first element is negative
stands for an input that crashes a native extension: the process dies of SIGSEGV.
"""
import ctypes
import os

import numpy as np


def predict(batch):
    results = []
    for vector in batch:
        if vector[0] < 0:
            ctypes.string_at(0)  # a segfault, as a buggy extension would have
        results.append((os.getpid(), float(np.linalg.norm(vector))))
    return results
