#!/usr/bin/env bash
# configure.sh's command line: every bad input is a clear error with the usage and a
# non-zero exit, before anything is configured; --help lists every option.
# Usage: tests/test_configure.sh path/to/configure.sh
set -uo pipefail
configure="$1"
passed=0
failed=0

expect_error() {  # expect_error "message fragment" args...
    local fragment="$1"
    shift
    local out rc
    out="$("$configure" "$@" 2>&1)"
    rc=$?
    if [[ $rc -ne 0 && "$out" == *"$fragment"* && "$out" == *"Usage:"* ]]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: configure.sh $* -> exit $rc, expected an error containing '$fragment' and the usage:"
        echo "$out" | head -5
    fi
}

expect_error "--asan and --tsan cannot be combined" --asan --tsan
expect_error "--asan and --tsan cannot be combined" --tsan --asan
expect_error "--jobs needs a positive integer, not 'abc'" --jobs abc
expect_error "--jobs needs a positive integer, not '0'" -j 0
expect_error "unknown option '--frobnicate'" --frobnicate
expect_error "unknown mode 'Fast'" --mode Fast
expect_error "option --prefix needs a value" --prefix
expect_error "--bench and --server-bench measure the Release build" --bench --asan
expect_error "--bench and --server-bench measure the Release build" --server-bench --tsan
expect_error "--bench runs the benchmarks; it cannot be combined with --no-benchmarks" --bench --no-benchmarks

help="$("$configure" --help)"
if [[ $? -eq 0 ]]; then
    for option in --help --mode --tests --no-benchmarks --examples --asan --tsan --flame --prefix --python --jobs \
                  --deps --build --test --run --bench --server-bench --install --build-dir PYSCHEDULER_PREFIX; do
        if [[ "$help" == *"$option"* ]]; then passed=$((passed + 1)); else
            failed=$((failed + 1)); echo "FAIL: --help does not mention $option"; fi
    done
else
    failed=$((failed + 1))
    echo "FAIL: --help exited non-zero"
fi

echo "configure.sh: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
