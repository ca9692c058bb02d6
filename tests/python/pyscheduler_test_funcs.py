"""Python functions the C++ tests call. Batch functions take a list, return a list."""
import sys
import threading


def add(a, b):
    return a + b


def concat(a, b):
    return a + b


def raise_value_error_sync(message):
    raise ValueError(message)


def identity(items):
    return items


def double(items):
    return [2 * x for x in items]


def as_tuple_plus_one(items):
    return tuple(x + 1 for x in items)


def batch_sizes(items):
    """Each item learns the size of the batch it was in."""
    return [len(items)] * len(items)


def always_raise(items):
    raise ValueError("refusing a batch of %d items" % len(items))


def raise_if_negative(items):
    if any(x < 0 for x in items):
        raise ValueError("negative item in %r" % (items,))
    return items


def one_too_few(items):
    return items[:-1]


def one_too_many(items):
    return items + [0]


def return_none(items):
    return None


def return_dict(items):
    return {i: x for i, x in enumerate(items)}


def return_generator(items):
    return (x for x in items)


def return_string(items):
    return "x" * len(items)


def raise_system_exit(items):
    raise SystemExit(3)


def raise_keyboard_interrupt(items):
    raise KeyboardInterrupt()


def return_range(items):
    return range(len(items))


def thread_ids(items):
    return [threading.get_ident()] * len(items)


def stringify(items):
    return [str(x) for x in items]


def sum_lists(items):
    return [sum(x) for x in items]


not_callable = 42


# --- gates: keep a batch inside Python until the test lets it go -------------------
_entered = threading.Event()
_gate = threading.Event()


def gated_identity(items):
    _entered.set()
    _gate.wait()
    return items


def wait_until_entered():
    _entered.wait()


def open_gate():
    _gate.set()


def close_gate():
    _gate.clear()
    _entered.clear()


def raise_on_negative_each(items):
    """Raises for the whole batch when any item is negative (failure injection)."""
    if any(x < 0 for x in items):
        raise ValueError("injected failure")
    return [x * 3 for x in items]


def via_cpp(items):
    """Calls back into C++ (tests register pyscheduler_reentry), which invokes another handler."""
    import pyscheduler_reentry
    return [pyscheduler_reentry.call_b(x) for x in items]


def boxed(items):
    """A fresh list per item: objects whose reference counts tests can watch."""
    return [[x] for x in items]
