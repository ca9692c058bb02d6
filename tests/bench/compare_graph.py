"""The task graph of bench_graph.cpp's BM_GraphSmqsched in plain Python, for
comparison: a sequential loop (the pure compute time) and Dask's threaded scheduler
on the same graph (dask.delayed). Prints seconds per row; with --json, one JSON
object (the benchmark runs it so, in the same round as its own figures).

    python tests/bench/compare_graph.py [n] [--json]      (n matrices; n*n products)
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyscheduler_bench_graph import inv_one, make_a, trace_of_product  # noqa: E402


def loop(a):
    n = len(a)
    b = [inv_one(x) for x in a]
    return [trace_of_product(b[i], b[k]) for i in range(n) for k in range(n)]


def with_dask(a, workers):
    import dask

    n = len(a)
    b = [dask.delayed(inv_one)(x) for x in a]
    c = [dask.delayed(trace_of_product)(b[i], b[k]) for i in range(n) for k in range(n)]
    return dask.compute(*c, scheduler="threads", num_workers=workers)


def measure(n):
    a = [make_a(i) for i in range(n)]
    rows = {}
    start = time.perf_counter()
    expected = loop(a)
    rows["loop"] = time.perf_counter() - start
    try:
        start = time.perf_counter()
        got = with_dask(a, 2)
        rows["dask_threads_2"] = time.perf_counter() - start
        assert abs(sum(got) - sum(expected)) < 1e-6 * abs(sum(expected))
    except ImportError:
        rows["dask_threads_2"] = float("nan")  # not installed: configure.sh --deps --bench installs it
    rows["checksum"] = sum(expected)
    return rows


def main():
    args = [x for x in sys.argv[1:] if not x.startswith("--")]
    n = int(args[0]) if args else 100
    rows = measure(n)
    if "--json" in sys.argv:
        print(json.dumps(rows))
    else:
        for name, value in rows.items():
            print(f"{name:16s} {value:.4f}")


if __name__ == "__main__":
    main()
