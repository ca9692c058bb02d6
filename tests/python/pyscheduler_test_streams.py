"""Generators for tests/test_streams.cpp and the stream benchmark. Pure Python, so the
module loads in an own-GIL interpreter too. Each function takes a batch (a list of
arguments, one per item) and returns one iterable per item."""

produced = 0  # elements the generators of this module have yielded (one per interpreter)
closed = 0    # generators whose finally block ran


def _count(n):
    global produced, closed
    try:
        for i in range(n):
            produced += 1
            yield i
    finally:
        closed += 1


def counting(batch):
    """Item n: the generator 0, 1, ..., n-1."""
    return [_count(n) for n in batch]


def _fail_after(n):
    yield from range(n)
    raise ValueError(f"failed after {n} elements")


def fail_after(batch):
    """Item n: 0 .. n-1, then ValueError."""
    return [_fail_after(n) for n in batch]


def ranges(batch):
    """Item n: range(n), an iterable that announces its length."""
    return [range(n) for n in batch]


def words(batch):
    """Item n: 'w0', 'w1', ... (strings); 'w3' is followed by 4.5 when n is negative."""
    def gen(n):
        for i in range(abs(n)):
            yield f"w{i}"
            if n < 0 and i == 3:
                yield 4.5
    return [gen(n) for n in batch]


def not_iterable(batch):
    return [7 for _ in batch]


def raising(batch):
    raise RuntimeError("the function itself failed")


def produced_count(_=None):
    return produced


def closed_count(_=None):
    return closed
