"""Imports numpy, which refuses to load in a sub-interpreter (tests/test_own_gil.cpp)."""
import numpy


def total(items):
    return [float(numpy.sum(x)) for x in items]
