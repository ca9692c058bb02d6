#!/usr/bin/env bash
# configure.sh - the one entry point to configure, build, test, benchmark and
# install pyscheduler. Run with --help for the options.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    cat <<'EOF'
Usage: ./configure.sh [options]

Configures a CMake build in build-<Mode>[-asan|-tsan] and, as asked, builds,
tests, runs an example, benchmarks or installs.

  -h, --help            print this help and exit
  -m, --mode MODE       Debug (default), Release or RelWithDebInfo; case-insensitive
  -t, --tests           build the tests and benchmarks
      --no-benchmarks   with the tests, leave the benchmarks out (they still build by default)
  -e, --examples        build the examples
      --asan            AddressSanitizer + UndefinedBehaviorSanitizer build (build-<Mode>-asan)
      --tsan            ThreadSanitizer build (build-<Mode>-tsan)
      --flame           keep frame pointers (for perf / flame graphs)
  -p, --prefix PATH     install prefix (default: $PYSCHEDULER_PREFIX, else /usr/local)
      --python PATH     the Python interpreter to embed; its environment (a venv included)
                        is what the embedded interpreter sees. Default: .venv-X.Y (made by
                        --deps from python3 on PATH) if it exists, else python3 on PATH
      --build-dir DIR   build directory (default: build-<Mode>[-asan|-tsan])
  -j, --jobs N          parallel build jobs (default: number of cores)
      --deps            install the system (apt-get) and Python (pip) dependencies first:
                        into --python if given, else into a new .venv-X.Y made from python3
      --build           build after configuring (implied by --test, --run, --bench, --install)
      --test            build the tests and examples, and run them all with ctest
      --run NAME        build the examples and run examples/NAME
      --bench           Release build of the benchmarks, run, printed as a table (with --deps,
                        also python/requirements-bench.txt: the comparisons' packages)
      --server-bench    Release build of examples/server, then its load test against a
                        GIL-per-request server and a pure-Python one (~4 minutes); writes
                        server_bench.csv and server_bench.png into the build directory
      --install         build and install the headers and CMake package files

Examples:
  ./configure.sh --deps --test                 # everything, then the test suite
  ./configure.sh --deps --mode Release --run svd
  ./configure.sh --asan --test                 # the suite under ASan + UBSan
  ./configure.sh --mode Release --install --prefix "$HOME/.local"
EOF
}

die() {
    echo "configure.sh: error: $*" >&2
    echo >&2
    usage >&2
    exit 2
}

mode=Debug
tests=OFF
benchmarks=ON
examples=OFF
sanitizer=""
flame=OFF
prefix="${PYSCHEDULER_PREFIX:-/usr/local}"
python=""
build_dir=""
jobs="$(nproc 2>/dev/null || echo 2)"
deps=0
build=0
run_tests=0
run_example=""
bench=0
server_bench=0
install=0

need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "option $1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        -m|--mode) need_arg "$@"; mode="$2"; shift ;;
        -t|--tests) tests=ON ;;
        --no-benchmarks) benchmarks=OFF ;;
        -e|--examples) examples=ON ;;
        --asan) [[ "$sanitizer" == thread ]] && die "--asan and --tsan cannot be combined"; sanitizer=address ;;
        --tsan) [[ "$sanitizer" == address ]] && die "--asan and --tsan cannot be combined"; sanitizer=thread ;;
        --flame) flame=ON ;;
        -p|--prefix) need_arg "$@"; prefix="$2"; shift ;;
        --python) need_arg "$@"; python="$2"; shift ;;
        --build-dir) need_arg "$@"; build_dir="$2"; shift ;;
        -j|--jobs) need_arg "$@"; jobs="$2"; shift ;;
        --deps) deps=1 ;;
        --build) build=1 ;;
        --test) run_tests=1; tests=ON; examples=ON; build=1 ;;
        --run) need_arg "$@"; run_example="$2"; examples=ON; build=1; shift ;;
        --bench) bench=1; tests=ON; build=1 ;;
        --server-bench) server_bench=1; examples=ON; build=1 ;;
        --install) install=1; build=1 ;;
        *) die "unknown option '$1'" ;;
    esac
    shift
done

case "${mode,,}" in
    debug) mode=Debug ;;
    release) mode=Release ;;
    relwithdebinfo) mode=RelWithDebInfo ;;
    *) die "unknown mode '$mode' (expected Debug, Release or RelWithDebInfo)" ;;
esac
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive integer, not '$jobs'"
[[ $bench == 1 && $benchmarks == OFF ]] && die "--bench runs the benchmarks; it cannot be combined with --no-benchmarks"
if [[ $bench == 1 || $server_bench == 1 ]]; then
    [[ -n "$sanitizer" ]] && die "--bench and --server-bench measure the Release build; they cannot be combined with --asan/--tsan"
    mode=Release
fi

# --- dependencies and the interpreter to embed -----------------------------------
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
if [[ -z "$python" ]]; then
    base="$(command -v python3 || true)"
    [[ -n "$base" ]] || die "no python3 on PATH; pass --python PATH"
    venv="$here/.venv-$(version_of "$base")"
    if [[ $deps == 1 && ! -x "$venv/bin/python" ]]; then
        "$here/tools/install-deps.sh" --system-only  # python3-venv on Debian
        echo "configure.sh: creating $venv"
        "$base" -m venv "$venv"
    fi
    if [[ -x "$venv/bin/python" ]]; then python="$venv/bin/python"; else python="$base"; fi
fi
python="$(command -v "$python" || echo "$python")"
[[ -x "$python" ]] || die "--python: '$python' is not an executable"
# Absolute (the build records it), without resolving the link: a venv's bin/python
# must stay the venv's.
[[ "$python" == /* ]] || python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
if [[ $deps == 1 ]]; then
    "$here/tools/install-deps.sh" "$python"
    if [[ $bench == 1 || $server_bench == 1 ]]; then
        "$python" -m pip install --quiet --disable-pip-version-check -r "$here/python/requirements-bench.txt"
    fi
fi

# --- configure ----------------------------------------------------------------
suffix=""
[[ "$sanitizer" == address ]] && suffix=-asan
[[ "$sanitizer" == thread ]] && suffix=-tsan
[[ -n "$build_dir" ]] || build_dir="$here/build-$mode$suffix"
generator=()  # Ninja when available; an existing build directory keeps its generator
if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
fi

cmake -S "$here" -B "$build_dir" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE="$mode" \
    -DCMAKE_INSTALL_PREFIX="$prefix" \
    -DPython_EXECUTABLE="$python" \
    -DBUILD_TESTS="$tests" \
    -DBUILD_BENCHMARKS="$benchmarks" \
    -DBUILD_EXAMPLES="$examples" \
    -DPYSCHEDULER_SANITIZER="$sanitizer" \
    -DPYSCHEDULER_FRAME_POINTERS="$flame"

if [[ $build == 1 ]]; then
    cmake --build "$build_dir" --parallel "$jobs"
fi

# --- sanitizer run-time settings --------------------------------------------------
# PYTHONMALLOC=malloc: CPython's small-object allocator would hide its allocations
# (and overflows into them) from ASan. Suppressions: CPython's own intentional leaks.
# The slow unwinder (libpython has no frame pointers) records each allocation's stack,
# malloc_context_size frames deep: the suppressions need the frame of the import that
# allocated, 21-24 frames up in this suite (20 reports a leak that 24 suppresses), and
# each frame costs every allocation: 40 keeps a margin at about 70 % of the time of 64.
export PYTHONMALLOC="${PYTHONMALLOC:-malloc}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:fast_unwind_on_malloc=0:malloc_context_size=40}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$here/lsan_suppressions.txt:print_suppressions=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export TSAN_OPTIONS="${TSAN_OPTIONS:-suppressions=$here/tsan_suppressions.txt:halt_on_error=1:second_deadlock_stack=1}"

if [[ $run_tests == 1 ]]; then
    ctest --test-dir "$build_dir" --output-on-failure --parallel "$jobs"
fi

if [[ -n "$run_example" ]]; then
    exe="$build_dir/examples/pyscheduler_example_$run_example"
    [[ -x "$exe" ]] || die "no example named '$run_example' (see examples/)"
    "$exe"
fi

if [[ $bench == 1 ]]; then
    "$build_dir/tests/bench/pyscheduler_bench" --benchmark_counters_tabular=true
    # Task graphs: dependencies between items, against a loop and Dask.
    "$build_dir/tests/bench/pyscheduler_bench_graph" --benchmark_counters_tabular=true
    # Streams: generators element by element, against a raw pybind11 loop.
    "$build_dir/tests/bench/pyscheduler_bench_stream" --benchmark_counters_tabular=true
    # The GPU pipeline (built where the CUDA toolkit is; reports a skip without a GPU).
    gpu_bench="$build_dir/tests/bench/pyscheduler_bench_gpu"
    if [[ -x "$gpu_bench" ]]; then "$gpu_bench" --benchmark_counters_tabular=true; fi
    # Python's own pools on the work of BM_PurePythonTwoHandlers, for comparison.
    "$python" "$here/tests/bench/compare_pools.py"
fi

if [[ $server_bench == 1 ]]; then
    server="$build_dir/examples/pyscheduler_example_server"
    [[ -x "$server" ]] || die "examples/server was not built (needs libcpp-httplib-dev and nlohmann-json3-dev: run with --deps)"
    "$python" "$here/examples/server/loadgen.py" --server-binary "$server" --python "$python" --out "$build_dir"
fi

if [[ $install == 1 ]]; then
    cmake --install "$build_dir"
fi
