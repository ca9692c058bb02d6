"""The Python side of pyscheduler.

- Where the C++ headers and CMake package files of this installation are
  (``cmake_dir()``, ``include_dir()``; also ``python -m pyscheduler --cmakedir``).
- ``batched``: write a handler's function one item at a time.
- ``stack``, ``split`` and ``stacked``: run a handler's function once on a batch of
  tensors (numpy, torch, cupy, jax arrays, or anything with ``__dlpack__``) stacked
  into one array, and hand the rows of the result back as per-item results.

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
import importlib
from typing import Any, Callable, Iterable, List, Optional, Sequence

__all__ = ["batched", "stacked", "stack", "split", "cmake_dir", "include_dir", "__version__"]
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


# --- batches of tensors -------------------------------------------------------------

_STACK_MODULES = {"numpy": "numpy", "torch": "torch", "cupy": "cupy", "jax": "jax.numpy", "jaxlib": "jax.numpy"}


def _array_module(item: Any):
    """The module whose ``stack`` joins arrays like ``item``: its own library's, or
    numpy (through DLPack or the buffer protocol) for anything else."""
    root = type(item).__module__.partition(".")[0]
    return importlib.import_module(_STACK_MODULES.get(root, "numpy"))


def _as_array(module, item: Any):
    if module.__name__ == "numpy" and type(item).__module__.partition(".")[0] not in ("numpy",):
        return module.from_dlpack(item) if hasattr(item, "__dlpack__") else module.asarray(item)
    return item


def stack(items: Sequence[Any]) -> Optional[Any]:
    """One array of shape ``(len(items), *shape)``, made by the items' own library,
    when every item has the same shape and dtype; ``None`` otherwise (or when empty).
    """
    if not items:
        return None
    module = _array_module(items[0])
    arrays = [_as_array(module, item) for item in items]
    first = arrays[0]
    if any(a.shape != first.shape or a.dtype != first.dtype for a in arrays[1:]):
        return None
    return module.stack(arrays)


def split(batch: Any) -> List[Any]:
    """The rows of ``batch`` along its first axis, as a list (views: no copy)."""
    return [batch[i] for i in range(batch.shape[0])]


def stacked(fn: Callable[[Any], Any]) -> Callable[[Sequence[Any]], List[Any]]:
    """Turns ``fn(batch_array) -> batch_of_results`` into a handler function.

    The items of a batch are stacked into one array (``stack``) and ``fn`` is called
    once; row i of its result is item i's result. When the shapes differ, ``fn`` runs
    on each item alone (as a batch of one). When the stacked call raises, each item
    is retried alone, so that only the items that fail get the error (the
    ``batched`` protocol: the exception takes the item's place).
    """

    def alone(item: Any) -> Any:
        try:
            return fn(stack([item]))[0]
        except Exception as error:  # noqa: BLE001 - handed to C++ for this item
            return error

    @functools.wraps(fn)
    def run_batch(items: Sequence[Any]) -> List[Any]:
        items = list(items)
        batch = stack(items)
        if batch is None:
            return [alone(item) for item in items]
        try:
            results = fn(batch)
        except Exception:  # noqa: BLE001 - isolate the failing items
            return [alone(item) for item in items]
        return split(results)

    return run_batch
