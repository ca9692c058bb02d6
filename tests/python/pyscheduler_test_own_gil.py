"""Pure-Python functions for tests/test_own_gil.cpp and the own-GIL benchmark: they
import nothing that refuses sub-interpreters."""

count = 0  # module state: one per interpreter


def bump(items):
    """Counts the items this interpreter's copy of the module has seen."""
    global count
    out = []
    for _ in items:
        count += 1
        out.append(count)
    return out


def square(x):
    return x * x


def squares(items):
    return [x * x for x in items]


def interpreter_id(items=None):
    """This interpreter's id; called with a batch, one per item."""
    try:
        import _interpreters as interpreters  # 3.13
    except ImportError:
        import _xxsubinterpreters as interpreters  # 3.12
    current = interpreters.get_current()
    ident = int(current[0] if isinstance(current, tuple) else current)
    return ident if items is None else [ident] * len(items)


def fail(items):
    raise ValueError(f"refusing a batch of {len(items)}")


def spin(items):
    """CPU-bound pure Python: sum of squares below n, per item."""
    return [sum(i * i for i in range(n)) for n in items]


def bump_here(items):
    """Per item: [this interpreter's id, how many items this interpreter's copy of the
    module has seen so far]."""
    ident = interpreter_id()
    return [[ident, seen] for seen in bump(items)]


def read_or_echo(items):
    """Per item: a number >= 0 is the read end of a pipe; blocks (GIL released) until a
    byte arrives there and returns it. A negative number comes back as it is."""
    import os

    return [os.read(x, 1)[0] if x >= 0 else x for x in items]


def fail_if_negative(items):
    if any(x < 0 for x in items):
        raise ValueError(f"negative item in {items!r}")
    return items
