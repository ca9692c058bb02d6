"""The Python side of examples/progress: a little CPU work per item."""


def work(items):
    return [sum(i * i for i in range(n)) for n in items]
