"""The Python side of pyscheduler.

- Where the C++ headers and CMake package files of this installation are
  (``cmake_dir()``, ``include_dir()``; also ``python -m pyscheduler --cmakedir``).
- ``batched``: write a handler's function one item at a time.

The batch protocol: a handler's Python function receives a list of committed items
and returns a sequence of as many results. A result that is an exception instance
(any ``BaseException``) fails that item's future alone, with
``pyscheduler::PythonError`` carrying the exception's type, message and traceback;
the other items complete normally. (So a function must not return exception objects
as ordinary data.)
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Callable, Iterable, List

__all__ = ["batched", "cmake_dir", "include_dir", "__version__"]
__version__ = "0.1.0"

_DATA = pathlib.Path(__file__).resolve().parent / "data"


def cmake_dir() -> str:
    """Directory of pyschedulerConfig.cmake, for ``-Dpyscheduler_DIR=...``."""
    return str(_DATA / "share" / "cmake" / "pyscheduler")


def include_dir() -> str:
    """Directory that holds ``pyscheduler/pyscheduler.hpp``."""
    return str(_DATA / "include")


def batched(fn: Callable[[Any], Any]) -> Callable[[Iterable[Any]], List[Any]]:
    """Turns ``fn(item) -> result`` into ``f(items) -> [result, ...]``.

    When ``fn`` raises an ``Exception`` for one item, the exception takes that item's
    place in the result list, and the C++ side fails only that item's future.
    ``BaseException``s that are not ``Exception``s (``KeyboardInterrupt``,
    ``SystemExit``) are not caught: they fail the whole batch.
    """

    @functools.wraps(fn)
    def run_batch(items: Iterable[Any]) -> List[Any]:
        results: List[Any] = []
        for item in items:
            try:
                results.append(fn(item))
            except Exception as error:  # noqa: BLE001 - handed to C++ for this item
                results.append(error)
        return results

    run_batch.__wrapped_single__ = fn  # type: ignore[attr-defined]
    return run_batch
