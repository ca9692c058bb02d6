"""Loaded by tests/exit_child.cpp: numpy is imported, and printing is buffered."""
import threading
import time

import numpy


def announce(items):
    print("python saw %d items, numpy %s" % (len(items), numpy.__name__))
    return items


_entered = threading.Event()
_never = threading.Event()


def slow(items):
    """Still running when main() returns: sleeps half a second."""
    _entered.set()
    time.sleep(0.5)
    print("slow call finished")
    return items


def forever(items):
    """Never returns (waits on an event nobody sets), releasing the GIL."""
    _entered.set()
    _never.wait()
    return items


def wait_until_entered():
    _entered.wait()
