"""multiprocessing's figures for the process-worker benchmarks (bench_process.cpp), on
the same functions (pyscheduler_bench_process.py). Pool start-up is excluded.

    python tests/bench/compare_process.py numpy <items> <n>     # Pool(2).map, chunksize 1 and auto: seconds
    python tests/bench/compare_process.py round_trip <count>    # Pool(2).apply back to back: p50 seconds
    python tests/bench/compare_process.py arrays <items> <mib>  # Pool(2).map of arrays, chunksize 1: seconds

Prints one JSON object.
"""
import json
import os
import sys
import time
from multiprocessing import Pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from pyscheduler_bench_process import echo_one, plus_one_one, small_numpy_one  # noqa: E402


def seconds(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main():
    what = sys.argv[1]
    rows = {}
    with Pool(2) as pool:
        pool.map(echo_one, [1, 2])  # start the workers outside the timing
        if what == "numpy":
            items, n = int(sys.argv[2]), int(sys.argv[3])
            work = [n] * items
            rows["pool_chunksize_1"] = seconds(lambda: pool.map(small_numpy_one, work, chunksize=1))
            rows["pool_chunksize_auto"] = seconds(lambda: pool.map(small_numpy_one, work))
        elif what == "round_trip":
            times = []
            for i in range(int(sys.argv[2])):
                start = time.perf_counter()
                pool.apply(echo_one, (i,))
                times.append(time.perf_counter() - start)
            times.sort()
            rows["pool_apply_p50"] = times[len(times) // 2]
        elif what == "arrays":
            items, mib = int(sys.argv[2]), int(sys.argv[3])
            a = np.zeros(mib * (1 << 20) // 8)
            rows["pool_map"] = seconds(lambda: pool.map(plus_one_one, [a] * items, chunksize=1))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
