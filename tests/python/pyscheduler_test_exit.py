"""Loaded by tests/exit_child.cpp: numpy is imported, and printing is buffered."""
import numpy


def announce(items):
    print("python saw %d items, numpy %s" % (len(items), numpy.__name__))
    return items
