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
