#!/usr/bin/env bash
# Runs one benchmark of two builds in turn, round after round, so that both see the
# same drift of a noisy machine; prints a line a run: the round, the build, the
# median of each counter asked for over the run's repetitions (with REPETITIONS 1,
# each row's own value), and the process's user and system CPU seconds.
# Usage: tools/bench-alternate.sh BUILD_A BUILD_B FILTER [ROUNDS [REPETITIONS [COUNTERS]]]
#   BUILD_*: build directories (each with tests/bench/pyscheduler_bench)
#   FILTER: --benchmark_filter, e.g. 'QueueInvokeThroughput<LightweightFuturePolicy>/batch:256/producers:1/'
#   ROUNDS (6), REPETITIONS (3), COUNTERS ('x_raw_pybind11 ns_per_item'): as named
# Example (the build before a change in a worktree):
#   git worktree add /tmp/before HEAD~1 && cmake -S /tmp/before -B /tmp/before/build -G Ninja \
#     -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTS=ON -DPython_EXECUTABLE="$PWD/.venv-3.11/bin/python" &&
#   ninja -C /tmp/before/build tests/bench/pyscheduler_bench &&
#   tools/bench-alternate.sh /tmp/before/build build-Release 'QueueInvokeThroughput<LightweightFuturePolicy>/batch:256/producers:1/'
# Calibrate first: one build given twice (A/A; a symlink to it keeps the lines apart)
# shows what the noise alone makes of a comparison. On the 2-vCPU VM, 40 alternated
# runs of the batch-256 rows of one configuration differed by up to 17 % in their
# medians (docs/performance-notes.md).
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n '2,18p' "$0" >&2; exit 2; }
builds=("$1" "$2")
filter="$3"
rounds="${4:-6}"
repetitions="${5:-3}"
read -r -a counters <<<"${6:-x_raw_pybind11 ns_per_item}"
for b in "${builds[@]}"; do
    [[ -x "$b/tests/bench/pyscheduler_bench" ]] || { echo "no $b/tests/bench/pyscheduler_bench" >&2; exit 2; }
done
for ((r = 1; r <= rounds; ++r)); do
    for b in "${builds[@]}"; do
        out=$({ /usr/bin/time -f "cpu_s %U %S" "$b/tests/bench/pyscheduler_bench" --benchmark_filter="$filter" \
                --benchmark_repetitions="$repetitions" --benchmark_counters_tabular=false; } 2>&1)
        line="$r $b"
        while read -r median; do
            for c in "${counters[@]}"; do
                # A counter one of the builds lacks is left out of its lines.
                value=$({ grep -oE "(^| )$c=[0-9.]+[a-zA-Z%]*" <<<"$median" || true; } | head -1 | tr -d ' ')
                if [[ -n "$value" ]]; then line+=" $value"; fi
            done
        done < <(if ((repetitions > 1)); then grep -E "_median " <<<"$out"; else grep -E "^BM_" <<<"$out"; fi || true)
        line+=" $(grep -E '^cpu_s' <<<"$out" || echo 'cpu_s ?')"
        echo "$line"
    done
done
