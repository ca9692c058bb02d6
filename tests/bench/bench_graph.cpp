// Scheduling benchmarks: task graphs (items that take other items' futures as
// arguments, InvokeHandler::submit) and groups (InvokeHandler::map), against what
// users write today, measured in the same run.
//
//   ./configure.sh --bench        (Release build; runs this after pyscheduler_bench)
#include <benchmark/benchmark.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <pyscheduler/pyscheduler.hpp>

#include "bench_support.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;
using pyscheduler::Future;
using pyscheduler::HandlerOptions;
using pyscheduler::InvokeHandler;
using pyscheduler::SharedFuture;
using Clock = std::chrono::steady_clock;

namespace {

using pyscheduler::bench::python;

InvokeHandler load(const char* fn, const HandlerOptions& o) {
    return python().loadPythonModule("pyscheduler_bench_graph", fn, o);
}

HandlerOptions options(std::size_t batch, std::size_t prefetch, std::size_t workers = 1,
                       pyscheduler::Order order = pyscheduler::Order::Fifo) {
    HandlerOptions o;
    o.batch_size = batch;
    o.prefetch_depth = prefetch;
    o.workers = workers;
    o.order = order;
    return o;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// --- smqsched's example ---------------------------------------------------------

/// A matrix as a C++ value: immutable and shared, so that feeding B[i] to 200
/// products copies nothing (the commit hands numpy a read-only view of it).
using Matrix = std::shared_ptr<const std::vector<double>>;
constexpr py::ssize_t kSize = 100;

py::array view(const Matrix& m) {
    auto* keep = new Matrix(m);
    py::capsule owner(keep, [](void* p) { delete static_cast<Matrix*>(p); });
    py::array_t<double> a({kSize, kSize}, {kSize * py::ssize_t(sizeof(double)), py::ssize_t(sizeof(double))},
                          const_cast<double*>(m->data()), owner);
    py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    return a;
}

Matrix to_matrix(py::object o) {
    auto a = o.cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
    return std::make_shared<const std::vector<double>>(a.data(), a.data() + a.size());
}

/// A[i], made by pyscheduler_bench_graph.make_a (the same matrices compare_graph.py uses).
std::vector<Matrix> make_inputs(int n) {
    python();  // starts the interpreter
    pyscheduler::detail::GilHold gil;
    py::object make_a = py::module_::import("pyscheduler_bench_graph").attr("make_a");
    std::vector<Matrix> a;
    for (int i = 0; i < n; ++i) a.push_back(to_matrix(make_a(i)));
    return a;
}

/// compare_graph.py run by this build's Python in a child process: seconds of the
/// sequential loop and of Dask's threaded scheduler (NaN when dask is not installed).
std::map<std::string, double> python_rows(int n) {
    pyscheduler::detail::GilHold gil;
    py::object sys = py::module_::import("sys");
    const std::string script = std::string(PYSCHEDULER_BENCH_DIR) + "/compare_graph.py";
    py::object out = py::module_::import("subprocess")
                         .attr("run")(py::make_tuple(sys.attr("executable"), script, std::to_string(n), "--json"),
                                      py::arg("capture_output") = true, py::arg("text") = true,
                                      py::arg("check") = true);
    return py::module_::import("json").attr("loads")(out.attr("stdout")).cast<std::map<std::string, double>>();
}

struct GraphRun {
    double total_s = 0;
    double first_c_s = 0;  // first C result's callback, from the start
    double checksum = 0;
};

/// The whole graph through three handlers: the inputs are C++ values, B[i] =
/// inv(A[i]) on one handler, C[i*n+k] = trace(B[i] @ B[k]) on another, each C
/// waiting for its two B's (no thread blocked). Every item is submitted at once.
GraphRun run_graph(const std::vector<Matrix>& a, InvokeHandler& inv, InvokeHandler& mul) {
    const int n = static_cast<int>(a.size());
    GraphRun r;
    const auto t0 = Clock::now();
    std::atomic<bool> first{true};
    std::atomic<long long> first_ns{0};
    std::vector<SharedFuture<Matrix>> b;
    b.reserve(static_cast<std::size_t>(n));
    for (const Matrix& m : a) b.push_back(inv.submit([](const Matrix& x) { return view(x); }, to_matrix, m).share());
    std::vector<Future<double>> c;
    c.reserve(static_cast<std::size_t>(n) * static_cast<std::size_t>(n));
    auto on_product = [&](py::object o) {
        if (first.exchange(false, std::memory_order_relaxed)) {
            first_ns.store(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
        }
        return o.cast<double>();
    };
    for (int i = 0; i < n; ++i) {
        for (int k = 0; k < n; ++k) {
            c.push_back(mul.submit([](const Matrix& x, const Matrix& y) { return py::make_tuple(view(x), view(y)); },
                                   on_product, b[static_cast<std::size_t>(i)], b[static_cast<std::size_t>(k)]));
        }
    }
    for (auto& f : c) r.checksum += f.get();
    r.total_s = seconds_since(t0);
    r.first_c_s = static_cast<double>(first_ns.load()) * 1e-9;
    return r;
}

/// Issue #16, benchmark 1. Each round runs, one after the other: the graph with the
/// products' handler in Fifo order, the same in Lifo order, and compare_graph.py
/// (sequential loop, Dask threads). Two workers per handler (Main interpreter:
/// numpy's BLAS releases the GIL). Ratios: x_loop_per_core = our total / (loop / 2)
/// (target <= 1.15), first_c_share = first C result / total (Lifo target <= 0.05).
void BM_GraphSmqsched(benchmark::State& state) {
    constexpr int kN = 100;
    const auto a = make_inputs(kN);
    auto inv = load("inv", options(1, 2, 2));
    auto mul_fifo = load("products", options(8, 2, 2, pyscheduler::Order::Fifo));
    auto mul_lifo = load("products", options(8, 2, 2, pyscheduler::Order::Lifo));
    GraphRun fifo, lifo;
    std::map<std::string, double> py_rows;
    double checksum_error = 0;
    for (auto _ : state) {
        const GraphRun f = run_graph(a, inv, mul_fifo);
        const GraphRun l = run_graph(a, inv, mul_lifo);
        const auto p = python_rows(kN);
        state.SetIterationTime(l.total_s);
        fifo.total_s += f.total_s;
        fifo.first_c_s += f.first_c_s;
        lifo.total_s += l.total_s;
        lifo.first_c_s += l.first_c_s;
        for (const auto& [k, v] : p) py_rows[k] += v;
        checksum_error = std::max({checksum_error, std::abs(f.checksum - p.at("checksum")) / std::abs(p.at("checksum")),
                                   std::abs(l.checksum - p.at("checksum")) / std::abs(p.at("checksum"))});
    }
    const double loop = py_rows["loop"];
    state.counters["fifo_s"] = fifo.total_s / static_cast<double>(state.iterations());
    state.counters["lifo_s"] = lifo.total_s / static_cast<double>(state.iterations());
    state.counters["loop_s"] = loop / static_cast<double>(state.iterations());
    state.counters["dask_s"] = py_rows["dask_threads_2"] / static_cast<double>(state.iterations());
    state.counters["fifo_x_loop_per_core"] = fifo.total_s / (loop / 2);
    state.counters["lifo_x_loop_per_core"] = lifo.total_s / (loop / 2);
    state.counters["x_dask"] = lifo.total_s / py_rows["dask_threads_2"];
    state.counters["fifo_first_c_share"] = fifo.first_c_s / fifo.total_s;
    state.counters["lifo_first_c_share"] = lifo.first_c_s / lifo.total_s;
    state.counters["checksum_rel_err"] = checksum_error;
}
BENCHMARK(BM_GraphSmqsched)->Iterations(3)->UseManualTime()->Unit(benchmark::kMillisecond);

// --- per-edge overhead ------------------------------------------------------------

auto cast_long = [](py::object o) { return o.cast<long>(); };
auto plus_one = [](long v) { return v + 1; };

/// Issue #16, benchmark 2a: a chain of kItems batch-1 items, each the input of the
/// next, all submitted at once (no thread waits), against the same chain driven by a
/// thread that waits for each result before it submits the next (the back-to-back
/// round trip: what a chain costs without dependencies). extra_ns_per_edge = (chain
/// - blocked) / kItems (target <= 1000).
void BM_EdgeChain(benchmark::State& state) {
    constexpr long kItems = 100000;
    auto h = load("identity", options(1, 1));
    double chain_s = 0, blocked_s = 0;
    for (auto _ : state) {
        auto t0 = Clock::now();
        long v = 0;
        for (long i = 0; i < kItems; ++i) v = h.submit(plus_one, cast_long, v).get();
        blocked_s += seconds_since(t0);
        benchmark::DoNotOptimize(v);

        t0 = Clock::now();
        Future<long> f = h.submit([] { return 0L; }, cast_long);
        for (long i = 0; i < kItems; ++i) f = h.submit(plus_one, cast_long, std::move(f));
        const long end = f.get();
        const double s = seconds_since(t0);
        chain_s += s;
        state.SetIterationTime(s);
        if (end != kItems) state.SkipWithError("wrong chain result");
    }
    const double it = static_cast<double>(state.iterations());
    state.counters["chain_ns_per_item"] = chain_s / it / kItems * 1e9;
    state.counters["blocked_ns_per_item"] = blocked_s / it / kItems * 1e9;
    state.counters["extra_ns_per_edge"] = (chain_s - blocked_s) / it / kItems * 1e9;
    state.counters["x_blocked"] = chain_s / blocked_s;
}
BENCHMARK(BM_EdgeChain)->Iterations(3)->UseManualTime()->Unit(benchmark::kMillisecond);

/// Issue #16, benchmark 2b: one input feeding kItems dependents (batch 256), against
/// kItems independent items through the same handler. The input stays in Python
/// (behind a gate) until every dependent was submitted, so each one waits.
/// extra_ns_per_edge = (fan-out - independent) / kItems (target <= 1000).
void BM_EdgeFanOut(benchmark::State& state) {
    constexpr long kItems = 100000;
    auto h = load("identity", options(256, 4));
    auto source = load("gated", options(1, 1));
    auto open_gate = load("open_gate", options(1, 1));
    double fan_s = 0, plain_s = 0;
    for (auto _ : state) {
        auto t0 = Clock::now();
        {
            std::vector<Future<long>> f;
            f.reserve(kItems);
            for (long i = 0; i < kItems; ++i) f.push_back(h.submit([i] { return i; }, cast_long));
            for (auto& x : f) benchmark::DoNotOptimize(x.get());
        }
        plain_s += seconds_since(t0);

        t0 = Clock::now();
        {
            SharedFuture<long> input = source.submit([] { return 1L; }, cast_long).share();
            std::vector<Future<long>> f;
            f.reserve(kItems);
            for (long i = 0; i < kItems; ++i) f.push_back(h.submit(plus_one, cast_long, input));
            open_gate.invoke<void>();
            for (auto& x : f) benchmark::DoNotOptimize(x.get());
        }
        const double s = seconds_since(t0);
        fan_s += s;
        state.SetIterationTime(s);
    }
    const double it = static_cast<double>(state.iterations());
    state.counters["fanout_ns_per_item"] = fan_s / it / kItems * 1e9;
    state.counters["plain_ns_per_item"] = plain_s / it / kItems * 1e9;
    state.counters["extra_ns_per_edge"] = (fan_s - plain_s) / it / kItems * 1e9;
    state.counters["x_plain"] = fan_s / plain_s;
}
BENCHMARK(BM_EdgeFanOut)->Iterations(5)->UseManualTime()->Unit(benchmark::kMillisecond);

// --- groups -------------------------------------------------------------------------

/// Issue #18: map over kItems small items (batch 256) against a loop of queue_invoke
/// through the same handler, interleaved. x_loop = map / loop (target <= 1.1).
/// Pause-to-quiescence and resume-to-first-batch are reported too.
void BM_MapVsLoop(benchmark::State& state) {
    constexpr int kItems = 1000000;
    auto h = load("identity", options(256, 4));
    std::vector<long> inputs(kItems);
    for (int i = 0; i < kItems; ++i) inputs[static_cast<std::size_t>(i)] = i;
    double map_s = 0, loop_s = 0;
    // The two alternate which goes first: the second of a pair runs on a heap the first
    // just filled and emptied, which this VM times differently.
    bool map_first = false;
    for (auto _ : state) {
        auto run_loop = [&] {
            const auto t0 = Clock::now();
            std::vector<Future<long>> f;
            f.reserve(kItems);
            for (long x : inputs) f.push_back(h.submit([x] { return x; }, cast_long));
            for (auto& x : f) benchmark::DoNotOptimize(x.get());
            loop_s += seconds_since(t0);
        };
        auto run_map = [&] {
            const auto t0 = Clock::now();
            auto m = h.map(inputs, [](long x) { return x; }, cast_long);
            m.group.wait();
            for (auto& x : m.futures) benchmark::DoNotOptimize(x.get());
            const double s = seconds_since(t0);
            map_s += s;
            state.SetIterationTime(s);
        };
        if (map_first) {
            run_map();
            run_loop();
        } else {
            run_loop();
            run_map();
        }
        map_first = !map_first;
    }
    state.counters["map_items_per_s"] = kItems * static_cast<double>(state.iterations()) / map_s;
    state.counters["x_loop"] = map_s / loop_s;
}
BENCHMARK(BM_MapVsLoop)->Iterations(4)->UseManualTime()->Unit(benchmark::kMillisecond);

/// Issue #18: pause and resume latencies on a handler kept busy (batch 1, items of
/// about 20 us of pure Python, 2 workers sharing the GIL). Each round: pause() amid the
/// stream; quiesce_us = from pause() to the last callback that ran before resume()
/// (the batches already in Python finishing); 20 ms later resume(); resume_us = from
/// resume() to the first callback after it. Medians over the rounds.
void BM_PauseResume(benchmark::State& state) {
    auto h = load("spin", options(1, 2, 2));
    std::atomic<long long> last_ns{0};
    const auto epoch = Clock::now();
    auto stamp = [&](py::object o) {
        last_ns.store(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - epoch).count());
        return o.cast<long>();
    };
    auto ns_now = [&] { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - epoch).count(); };
    std::vector<double> quiesce_us, resume_us;
    for (auto _ : state) {
        std::vector<Future<long>> f;
        for (int i = 0; i < 4000; ++i) f.push_back(h.submit([] { return 300; }, stamp));
        std::this_thread::sleep_for(std::chrono::milliseconds(5));  // the stream is flowing
        const long long paused_at = ns_now();
        h.pause();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // measurement window
        quiesce_us.push_back(static_cast<double>(std::max(0LL, last_ns.load() - paused_at)) / 1000);
        const long long resumed_at = ns_now();
        h.resume();
        while (last_ns.load() < resumed_at) std::this_thread::yield();
        resume_us.push_back(static_cast<double>(last_ns.load() - resumed_at) / 1000);
        for (auto& x : f) benchmark::DoNotOptimize(x.get());
    }
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    state.counters["quiesce_us_p50"] = median(quiesce_us);
    state.counters["quiesce_us_max"] = *std::max_element(quiesce_us.begin(), quiesce_us.end());
    state.counters["resume_us_p50"] = median(resume_us);
    state.counters["resume_us_max"] = *std::max_element(resume_us.begin(), resume_us.end());
}
BENCHMARK(BM_PauseResume)->Iterations(15)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
