"""Python's own ways to run the work of BM_PurePythonTwoHandlers on two cores, for the
README's comparison: a plain loop, concurrent.futures.ThreadPoolExecutor(2) and
multiprocessing.Pool(2) (its start-up excluded; the pool is warmed first).

    python tests/bench/compare_pools.py [items] [n]
"""
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyscheduler_bench_funcs import spin_one  # noqa: E402


def timed(label, run, items):
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    print(f"{label:<34} {items / seconds:8.1f} items/s  ({seconds:.3f} s)")
    return seconds


def main():
    items = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    work = [n] * items
    print(f"{items} items of spin_one({n}), Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    serial = timed("plain loop (one thread)", lambda: [spin_one(x) for x in work], items)
    with ThreadPoolExecutor(2) as pool:
        threads = timed("ThreadPoolExecutor(2)", lambda: list(pool.map(spin_one, work)), items)
    with Pool(2) as pool:
        pool.map(spin_one, [1, 1])  # start the workers outside the timing
        processes = timed("multiprocessing.Pool(2)", lambda: pool.map(spin_one, work, chunksize=8), items)
    print(f"speed-up over the loop: threads {serial / threads:.2f}x, processes {serial / processes:.2f}x")


if __name__ == "__main__":
    main()
