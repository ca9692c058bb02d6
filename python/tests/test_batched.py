"""The Python helpers, without C++."""
import pytest

import pyscheduler


def test_batched_maps_items_in_order():
    @pyscheduler.batched
    def square(x):
        return x * x

    assert square([1, 2, 3]) == [1, 4, 9]
    assert square([]) == []
    assert square.__name__ == "square"


def test_batched_puts_the_exception_in_place_of_the_failed_item():
    @pyscheduler.batched
    def inverse(x):
        return 1 / x

    results = inverse([1, 0, 4])
    assert results[0] == 1
    assert isinstance(results[1], ZeroDivisionError)
    assert results[2] == 0.25


def test_batched_lets_base_exceptions_fail_the_batch():
    @pyscheduler.batched
    def interrupt(x):
        raise KeyboardInterrupt()

    with pytest.raises(KeyboardInterrupt):
        interrupt([1])
