import time


def slow_double(items):
    """Stands in for I/O or a GIL-releasing model: 10 ms per call, whatever the batch."""
    time.sleep(0.010)
    return [2 * x for x in items]
