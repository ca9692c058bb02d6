"""Python's own ways to run CPU-bound pure-Python items on two cores, for comparison
with pyscheduler's own-GIL handlers and worker pools: a plain loop,
concurrent.futures.ThreadPoolExecutor(2), and multiprocessing.Pool(2) with chunksize 1
(one item per task, like a request) and with Pool.map's automatic chunking. Pool
start-up is excluded (the pool is warmed first).

    python tests/bench/compare_pools.py [items] [n] [--json]

Each item is spin_one(n). With --json, prints one JSON object of seconds per row
(the benchmark BM_PoolPurePython runs it so, in the same round as its own figures).
"""
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyscheduler_bench_funcs import spin_one  # noqa: E402


def seconds(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(items, n):
    work = [n] * items
    rows = {"loop": seconds(lambda: [spin_one(x) for x in work])}
    with ThreadPoolExecutor(2) as pool:
        rows["threads"] = seconds(lambda: list(pool.map(spin_one, work)))
    with Pool(2) as pool:
        pool.map(spin_one, [1, 1])  # start the workers outside the timing
        rows["pool_chunksize_1"] = seconds(lambda: pool.map(spin_one, work, chunksize=1))
        rows["pool_chunksize_auto"] = seconds(lambda: pool.map(spin_one, work))
    return rows


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    items = int(args[0]) if len(args) > 0 else 400
    n = int(args[1]) if len(args) > 1 else 20000
    rows = measure(items, n)
    if "--json" in sys.argv:
        print(json.dumps(rows))
        return
    print(f"{items} items of spin_one({n}), Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    labels = {
        "loop": "plain loop (one thread)",
        "threads": "ThreadPoolExecutor(2)",
        "pool_chunksize_1": "multiprocessing.Pool(2), chunksize 1",
        "pool_chunksize_auto": "multiprocessing.Pool(2), chunksize auto",
    }
    for key, label in labels.items():
        print(f"{label:<42} {items / rows[key]:8.1f} items/s  {rows['loop'] / rows[key]:5.2f}x the loop")


if __name__ == "__main__":
    main()
