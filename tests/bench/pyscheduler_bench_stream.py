"""Generators for tests/bench/bench_stream.cpp."""


def _count(n):
    for i in range(n):
        yield i


def counting(batch):
    """Item n: the generator 0, 1, ..., n-1 (one per item of the batch)."""
    return [_count(n) for n in batch]


def generator(n):
    """The same generator, for the raw pybind11 loop."""
    return _count(n)
