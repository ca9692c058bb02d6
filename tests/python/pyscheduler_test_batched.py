"""A handler function written with the Python helper package (python/pyscheduler)."""
import pyscheduler


@pyscheduler.batched
def inverse(x):
    if x == 0:
        raise ZeroDivisionError("item %r has no inverse" % (x,))
    return 1.0 / x


def exception_as_result(items):
    """Returns exception instances directly: the raw protocol, no helper."""
    return [KeyError("missing %d" % x) if x % 2 else x for x in items]


@pyscheduler.stacked
def row_norms(batch):
    """Called once per batch on a (n, 3) numpy array when the shapes agree."""
    import numpy
    if (batch < 0).any():
        raise ValueError("negative entry")
    return numpy.linalg.norm(batch, axis=1)
