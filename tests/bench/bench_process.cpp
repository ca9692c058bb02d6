// Process workers (InterpreterKind::Process) against Python's multiprocessing on the
// same functions (pyscheduler_bench_process.py), each round measuring both: every
// figure is a ratio to the multiprocessing row of the same round (compare_process.py,
// run as a python subprocess of the embedded environment), or to one Main worker.
//
//   ./configure.sh --bench    (Release build; this binary is build-Release/tests/bench/pyscheduler_bench_process)
#include <benchmark/benchmark.h>
#include <pybind11/stl.h>
#include <pyscheduler/pyscheduler.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "bench_support.hpp"

namespace py = pybind11;
using pyscheduler::GilSafe;
using pyscheduler::HandlerOptions;
using pyscheduler::InterpreterKind;
using pyscheduler::InvokeHandler;
using Clock = std::chrono::steady_clock;

namespace {

using pyscheduler::bench::python;

InvokeHandler load(const char* fn, InterpreterKind kind, std::size_t workers, std::size_t prefetch = 4,
                   std::size_t batch_size = 1) {
    HandlerOptions o;
    o.interpreter = kind;
    o.workers = workers;
    o.prefetch_depth = prefetch;
    o.batch_size = batch_size;
    return python().loadPythonModule("pyscheduler_bench_process", fn, o);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// compare_process.py's JSON rows for `args`.
std::map<std::string, double> multiprocessing_rows(const std::vector<std::string>& args) {
    pyscheduler::detail::GilHold gil;
    py::module_ sys = py::module_::import("sys");
    py::list command;
    command.append(sys.attr("executable"));
    command.append(std::string(PYSCHEDULER_BENCH_DIR) + "/compare_process.py");
    for (const auto& a : args) command.append(a);
    py::object out = py::module_::import("subprocess").attr("run")(command, py::arg("capture_output") = true,
                                                                   py::arg("text") = true, py::arg("check") = true);
    return py::module_::import("json").attr("loads")(out.attr("stdout")).cast<std::map<std::string, double>>();
}

/// Seconds for `items` items of small_numpy_one(n) queued at once on `h` (map), waited
/// for as one group, as Pool.map waits for its results: no thread wakes per item.
double numpy_seconds(InvokeHandler& h, int items, int n) {
    const std::vector<int> inputs(static_cast<std::size_t>(items), n);
    const auto t0 = Clock::now();
    auto mapped = h.map(inputs, [](int v) { return v; }, [](py::object r) { return r.cast<double>(); });
    mapped.group.wait();
    const double s = seconds_since(t0);
    for (auto& f : mapped.futures) benchmark::DoNotOptimize(f.get());
    return s;
}

/// Seconds for `items` calls of small_numpy([n]) made by `workers` Python threads, each
/// on its own worker process, calling the worker's proxy (what a Process handler's
/// executor calls) directly: the transport's limit, without the pipeline
/// (process_driver_seconds).
double driver_seconds(int items, int n, int workers) {
    pyscheduler::detail::GilHold gil;
    py::list procs;
    for (int i = 0; i < workers; ++i) {
        procs.append(pyscheduler::detail::start_process_worker("pyscheduler_bench_process", "small_numpy", "driver",
                                                               static_cast<std::size_t>(i), 0, 0.0));
    }
    return py::module_::import("pyscheduler_bench_process").attr("process_driver_seconds")(procs, items, n).cast<double>();
}

/// Issue #15, benchmark 1: Python-heavy numpy that holds the GIL (n tiny numpy calls per
/// item), batch 1. Two process workers against one Main worker and multiprocessing's
/// Pool(2) (chunksize 1, and Pool.map's automatic chunking).
/// x_one_main: speedup over one Main worker (target >= 1.7); x_pool_*: speedup over the pool (> 1);
/// x_driver: the bare transport's time over ours (one call at a time per child; above 1 when
/// the pipeline keeps the next call waiting in each child).
/// batched_x_pool_auto: two process workers with batch_size 32 (what chunking is to the
/// pool) against the pool's automatic chunking.
void BM_ProcessNumpyHoldingTheGil(benchmark::State& state) {
    const int n = static_cast<int>(state.range(0));
    const int items = std::max(200, 400000 / n);
    auto main_one = load("small_numpy", InterpreterKind::Main, 1);
    auto process_two = load("small_numpy", InterpreterKind::Process, 2);
    auto batched_two = load("small_numpy", InterpreterKind::Process, 2, 2, 32);
    std::map<std::string, double> sum;
    for (auto _ : state) {
        sum["main"] += numpy_seconds(main_one, items, n);
        const double p = numpy_seconds(process_two, items, n);
        sum["process"] += p;
        state.SetIterationTime(p);
        sum["batched"] += numpy_seconds(batched_two, items, n);
        sum["driver"] += driver_seconds(items, n, 2);
        for (const auto& [row, s] : multiprocessing_rows({"numpy", std::to_string(items), std::to_string(n)})) {
            sum[row] += s;
        }
    }
    state.counters["item_us"] = sum["main"] / (items * static_cast<double>(state.iterations())) * 1e6;
    state.counters["x_one_main"] = sum["main"] / sum["process"];
    state.counters["x_driver"] = sum["driver"] / sum["process"];
    state.counters["x_pool_chunk1"] = sum["pool_chunksize_1"] / sum["process"];
    state.counters["x_pool_auto"] = sum["pool_chunksize_auto"] / sum["process"];
    state.counters["batched_x_pool_auto"] = sum["pool_chunksize_auto"] / sum["batched"];
}
BENCHMARK(BM_ProcessNumpyHoldingTheGil)->Arg(20)->Arg(200)->Arg(2000)->Iterations(3)->UseManualTime()->Unit(
    benchmark::kMillisecond);

/// Issue #15, benchmark 2: batch-1 round trip (queue_invoke(...).get(), back to back)
/// through one process worker, against multiprocessing's Pool.apply on the same
/// function. x_pool_apply: our p50 / Pool.apply's p50 (target <= 0.5).
void BM_ProcessRoundTrip(benchmark::State& state) {
    constexpr int kCalls = 2000;
    auto h = load("echo", InterpreterKind::Process, 1, 1);
    std::vector<double> ours;
    double pool_p50 = 0;
    int i = 0;
    for (auto _ : state) {
        for (int c = 0; c < kCalls; ++c) {
            const auto t0 = Clock::now();
            benchmark::DoNotOptimize(
                h.queue_invoke([v = i++] { return v; }, [](py::object r) { return r.cast<int>(); }).get());
            ours.push_back(seconds_since(t0));
        }
        pool_p50 += multiprocessing_rows({"round_trip", std::to_string(kCalls)})["pool_apply_p50"];
    }
    std::nth_element(ours.begin(), ours.begin() + static_cast<std::ptrdiff_t>(ours.size() / 2), ours.end());
    const double p50 = ours[ours.size() / 2];
    pool_p50 /= static_cast<double>(state.iterations());
    state.counters["p50_us"] = p50 * 1e6;
    state.counters["pool_apply_p50_us"] = pool_p50 * 1e6;
    state.counters["x_pool_apply"] = p50 / pool_p50;
}
BENCHMARK(BM_ProcessRoundTrip)->Iterations(3)->Unit(benchmark::kMillisecond);

/// Issue #15, benchmark 3: a 4 MiB numpy array per item, sent to a worker that returns
/// it plus one (4 MiB back), two workers each, queued at once. x_pool: our items/s /
/// Pool(2).map's (chunksize 1) (target >= 2).
void BM_ProcessArrays4MiB(benchmark::State& state) {
    constexpr int kItems = 200;
    auto h = load("plus_one", InterpreterKind::Process, 2, 2);
    GilSafe<py::object> array = [] {
        pyscheduler::detail::GilHold gil;
        return GilSafe<py::object>(py::module_::import("numpy").attr("zeros")((4 << 20) / 8));
    }();
    double ours = 0;
    double pool = 0;
    for (auto _ : state) {
        const auto t0 = Clock::now();
        std::vector<std::future<long>> futures;
        for (int i = 0; i < kItems; ++i) {
            futures.push_back(h.queue_invoke([&array] { return array.get(); },
                                             [](py::object r) { return r.attr("nbytes").cast<long>(); }));
        }
        for (auto& f : futures) benchmark::DoNotOptimize(f.get());
        const double s = seconds_since(t0);
        ours += s;
        state.SetIterationTime(s);
        pool += multiprocessing_rows({"arrays", std::to_string(kItems), "4"})["pool_map"];
    }
    state.counters["items_per_s"] = kItems * static_cast<double>(state.iterations()) / ours;
    state.counters["pool_items_per_s"] = kItems * static_cast<double>(state.iterations()) / pool;
    state.counters["x_pool"] = pool / ours;
}
BENCHMARK(BM_ProcessArrays4MiB)->Iterations(3)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
