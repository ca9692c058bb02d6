// pyscheduler benchmarks. Every figure is reported next to its raw limit measured in
// the same process and run: the same Python function called directly through
// pybind11 (or the CPython C API) with the GIL already held. Counters named
// "x_raw" are the ratio ours / raw (lower is better; 1.0 is the limit).
//
//   ./configure.sh --bench        (Release build, then this binary, tabular output)
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <pybind11/stl.h>
#include <pyscheduler/pyscheduler.hpp>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"

namespace py = pybind11;
using pyscheduler::DefaultPolicy;
using pyscheduler::HandlerOptions;
using pyscheduler::InvokeHandler;
using pyscheduler::LightweightFuturePolicy;
using Clock = std::chrono::steady_clock;

namespace {

using pyscheduler::bench::python;

template <class Policy = DefaultPolicy>
pyscheduler::BasicInvokeHandler<Policy> load(const char* fn, const HandlerOptions& o) {
    return python<Policy>().loadPythonModule("pyscheduler_bench_funcs", fn, o);
}

HandlerOptions options(std::size_t batch, std::size_t prefetch) {
    HandlerOptions o;
    o.batch_size = batch;
    o.prefetch_depth = prefetch;
    return o;
}

double percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    auto k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return v[k];
}

double ns_since(Clock::time_point t0) { return std::chrono::duration<double, std::nano>(Clock::now() - t0).count(); }

// Raw limits are measured interleaved with the figures they bound (a raw round, then
// ours, every iteration): this VM's speed drifts by tens of percent within a run, and
// a ratio of two measurements taken seconds apart would carry that drift.

/// A bench function, looked up with the GIL and dropped with it.
class BenchFunction {
public:
    explicit BenchFunction(const char* name) {
        pyscheduler::detail::GilHold gil;
        fn_ = py::module_::import("pyscheduler_bench_funcs").attr(name);
    }
    ~BenchFunction() {
        pyscheduler::detail::GilHold gil;
        fn_ = py::object();
    }
    const py::object& operator*() const { return fn_; }

private:
    py::object fn_;
};

/// Raw limit of a batched call, per item: a list of `batch` ints built, the function
/// called once, the results unpacked; GIL held throughout. C API, no pybind11 layers:
/// the stricter of the two limits.
double raw_batch_ns_per_item(const char* function, std::size_t batch, std::size_t items) {
    const BenchFunction f(function);
    pyscheduler::detail::GilHold gil;
    const py::object& fn = *f;
    long sink = 0;
    const auto t0 = Clock::now();
    for (std::size_t done = 0; done < items; done += batch) {
        PyObject* list = PyList_New(static_cast<Py_ssize_t>(batch));
        for (std::size_t i = 0; i < batch; ++i) PyList_SET_ITEM(list, i, PyLong_FromSize_t(done + i));
        PyObject* result = PyObject_CallOneArg(fn.ptr(), list);
        for (std::size_t i = 0; i < batch; ++i) sink += PyLong_AsLong(PyList_GET_ITEM(result, i));
        Py_DECREF(result);
        Py_DECREF(list);
    }
    benchmark::DoNotOptimize(sink);
    return ns_since(t0) / static_cast<double>(items);
}

/// The same through pybind11, the way a user would write it (py::list::append,
/// calling the py::object, py::handle::cast per result): the limit the issue's
/// targets are stated against.
double raw_pybind11_batch_ns_per_item(const char* function, std::size_t batch, std::size_t items) {
    const BenchFunction f(function);
    pyscheduler::detail::GilHold gil;
    const py::object& fn = *f;
    long sink = 0;
    const auto t0 = Clock::now();
    for (std::size_t done = 0; done < items; done += batch) {
        py::list list;
        for (std::size_t i = 0; i < batch; ++i) list.append(static_cast<int>(done + i));
        py::object result = fn(list);
        for (py::handle item : result) sink += item.cast<int>();
    }
    benchmark::DoNotOptimize(sink);
    return ns_since(t0) / static_cast<double>(items);
}

auto cast_int = [](py::object o) { return o.cast<int>(); };

// --- invoke ------------------------------------------------------------------

/// Raw limit: identity(i) through pybind11 with the GIL already held, timed the same
/// way, one raw call before each of ours.
void BM_Invoke(benchmark::State& state) {
    auto h = load("identity", options(1, 1));
    const BenchFunction fn("identity");
    std::vector<double> ns, raw;
    int i = 0;
    for (auto _ : state) {
        {
            pyscheduler::detail::GilHold gil;
            const auto t0 = Clock::now();
            benchmark::DoNotOptimize((*fn)(i).cast<int>());
            raw.push_back(ns_since(t0));
        }
        const auto t0 = Clock::now();
        benchmark::DoNotOptimize(h.invoke<int>(i++));
        ns.push_back(ns_since(t0));
    }
    const double p50 = percentile(ns, 0.5);
    const double raw_p50 = percentile(raw, 0.5);
    state.counters["p50_ns"] = p50;
    state.counters["p99_ns"] = percentile(ns, 0.99);
    state.counters["raw_p50_ns"] = raw_p50;
    state.counters["x_raw"] = p50 / raw_p50;
}
BENCHMARK(BM_Invoke)->Iterations(200000);

// --- queue_invoke throughput -----------------------------------------------------

/// `items` items through one handler from `producers` threads; returns seconds.
template <class Policy>
double run_items(pyscheduler::BasicInvokeHandler<Policy>& h, int producers, std::size_t items) {
    using Future = typename pyscheduler::BasicInvokeHandler<Policy>::template future<int>;
    const auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
            const std::size_t mine = items / static_cast<std::size_t>(producers);
            std::vector<Future> futures;
            futures.reserve(mine);
            for (std::size_t i = 0; i < mine; ++i) {
                int v = static_cast<int>(static_cast<std::size_t>(p) * mine + i);
                futures.push_back(h.queue_invoke([v] { return v; }, cast_int));
            }
            long sink = 0;
            for (auto& f : futures) sink += f.get();
            benchmark::DoNotOptimize(sink);
        });
    }
    for (auto& t : threads) t.join();
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// Policy: DefaultPolicy (std::future) or LightweightFuturePolicy (pyscheduler::Future).
/// x_raw: against the C API limit; x_raw_pybind11: against the pybind11 limit.
/// exec_cpu_ns / commit_cpu_ns: CPU the executor / commit thread used per item while
/// the items ran (the executor is this row's critical path; exec_x_raw_pybind11 is its
/// CPU against the pybind11 limit, which the three threads sharing two cores add to).
/// steal_pct: the share of the machine's CPU time the hypervisor stole during the
/// timed rounds (raw rounds included; /proc/stat, so in 10 ms ticks): a pipeline of
/// three threads needs both vCPUs, the single-threaded limit one, and runs with much
/// steal read high (docs/performance-notes.md).
/// The timed rounds follow one untimed warm-up round, reported on its own
/// (warmup_x_raw_pybind11, against a raw round just before it): a process's first
/// 120 000 items touch some 12 MB of fresh memory (about 3 100 page faults here,
/// mostly the slabs the producer carves items from), a start-up cost the
/// steady-state rows leave out.
template <class Policy>
void BM_QueueInvokeThroughput(benchmark::State& state) {
    using pyscheduler::bench::threads_cpu_ns;
    const auto batch = static_cast<std::size_t>(state.range(0));
    const auto producers = static_cast<int>(state.range(1));
    const std::size_t items = 120000;
    auto h = load<Policy>("identity_batch", options(batch, 64));
    const double warmup_raw = raw_pybind11_batch_ns_per_item("identity_batch", batch, items);
    const double warmup_ns = run_items(h, producers, items) * 1e9 / static_cast<double>(items);
    state.counters["warmup_x_raw_pybind11"] = warmup_ns / warmup_raw;
    double seconds = 0, raw_sum = 0, raw_pybind11_sum = 0, exec_ns = 0, commit_ns = 0;
    const pyscheduler::bench::HostCpuTicks ticks_before = pyscheduler::bench::host_cpu_ticks();
    for (auto _ : state) {
        raw_sum += raw_batch_ns_per_item("identity_batch", batch, items);
        raw_pybind11_sum += raw_pybind11_batch_ns_per_item("identity_batch", batch, items);
        const double exec_before = threads_cpu_ns("pys-exec");
        const double commit_before = threads_cpu_ns("pys-commit");
        const double s = run_items(h, producers, items);
        exec_ns += threads_cpu_ns("pys-exec") - exec_before;
        commit_ns += threads_cpu_ns("pys-commit") - commit_before;
        state.SetIterationTime(s);
        seconds += s;
    }
    state.counters["steal_pct"] = pyscheduler::bench::steal_percent(ticks_before, pyscheduler::bench::host_cpu_ticks());
    const auto iterations = static_cast<double>(state.iterations());
    const double raw = raw_sum / iterations;
    const double raw_pybind11 = raw_pybind11_sum / iterations;
    const double ns_per_item = seconds * 1e9 / (static_cast<double>(items) * iterations);
    state.counters["items_per_s"] = 1e9 / ns_per_item;
    state.counters["ns_per_item"] = ns_per_item;
    state.counters["raw_ns_per_item"] = raw;
    state.counters["x_raw"] = ns_per_item / raw;
    state.counters["raw_pybind11_ns"] = raw_pybind11;
    state.counters["x_raw_pybind11"] = ns_per_item / raw_pybind11;
    const double all_items = static_cast<double>(items) * iterations;
    state.counters["exec_cpu_ns"] = exec_ns / all_items;
    state.counters["commit_cpu_ns"] = commit_ns / all_items;
    state.counters["exec_x_raw_pybind11"] = exec_ns / all_items / raw_pybind11;
    const pyscheduler::QueueStats stats = h.get_queue_stats();
    state.counters["batch_ema"] = stats.execute_batch_size_ema;
    state.counters["producer_yields"] = static_cast<double>(stats.producer_yields);  // warm-up round included
}
/// Batch sizes 1 to 256 from one producer, and batch 256 from 2 and 4.
void throughput_cases(benchmark::internal::Benchmark* b) {
    b->ArgNames({"batch", "producers"})
        ->ArgsProduct({{1, 8, 64, 256}, {1}})
        ->Args({256, 2})
        ->Args({256, 4})
        ->Iterations(5)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
}
BENCHMARK_TEMPLATE(BM_QueueInvokeThroughput, DefaultPolicy)->Apply(throughput_cases);
BENCHMARK_TEMPLATE(BM_QueueInvokeThroughput, LightweightFuturePolicy)->Apply(throughput_cases);

/// The noise floor of every x_raw_pybind11 above: the batch-256 raw limit alone, one
/// round of 120 000 items an iteration with nothing else running, and how far its
/// rounds spread (max_over_min). A ratio to this limit cannot be steadier than the
/// limit itself is from one moment to the next.
void BM_RawLimitSpread(benchmark::State& state) {
    python();  // the interpreter, and tests/bench on sys.path
    std::vector<double> rounds;
    for (auto _ : state) rounds.push_back(raw_pybind11_batch_ns_per_item("identity_batch", 256, 120000));
    const auto [lo, hi] = std::minmax_element(rounds.begin(), rounds.end());
    state.counters["raw_min_ns"] = *lo;
    state.counters["raw_median_ns"] = percentile(rounds, 0.5);
    state.counters["raw_max_ns"] = *hi;
    state.counters["max_over_min"] = *hi / *lo;
}
BENCHMARK(BM_RawLimitSpread)->Iterations(40)->Unit(benchmark::kMillisecond);

// --- round trips -------------------------------------------------------------------

/// Raw limit of a round trip: a batch-1 item hops caller -> commit thread -> executor
/// -> caller, so it can be no faster than three threads waking one another in a
/// chain. The two relay threads wait as the pipeline's stages do (the same semaphore,
/// through detail::idle_wait_many, each learning its waits with an IdleBudget); the
/// caller parks at once, as a future's waiter does.
class WakeChain {
public:
    WakeChain()
        : commit_(0, 0),
          executor_(0, 0),
          back_(0, 0),
          commit_thread_([this] { relay(commit_, executor_); }),
          executor_thread_([this] { relay(executor_, back_); }) {}
    ~WakeChain() {
        stop_ = true;
        commit_.signal();
        executor_.signal();
        commit_thread_.join();
        executor_thread_.join();
    }
    /// One trip around the chain, in nanoseconds.
    double round_ns() {
        const auto t0 = Clock::now();
        commit_.signal();
        back_.wait();
        return ns_since(t0);
    }

private:
    using Semaphore = moodycamel::LightweightSemaphore;
    void relay(Semaphore& in, Semaphore& out) {
        pyscheduler::detail::IdleBudget<DefaultPolicy> budget;
        for (;;) {
            pyscheduler::detail::idle_wait_many<DefaultPolicy>(in, 1, &budget);
            if (stop_.load()) return;
            out.signal();
        }
    }
    Semaphore commit_, executor_, back_;
    std::atomic<bool> stop_{false};
    std::thread commit_thread_, executor_thread_;
};

template <class Policy>
void round_trip(benchmark::State& state, std::chrono::microseconds gap) {
    auto h = load<Policy>("identity_batch", options(1, 1));
    WakeChain chain;
    // Raw rounds go in blocks: one before each of ours when requests are 2 ms apart;
    // 1000 before every 1000 of ours back to back (a raw round between two of ours
    // would make them no longer back to back).
    const int block = gap.count() > 0 ? 1 : 1000;
    std::vector<double> ns, raw;
    int i = 0;
    for (auto _ : state) {
        if (i % block == 0 || gap.count() > 0) {
            state.PauseTiming();
            if (i % block == 0) {
                for (int r = 0; r < block; ++r) {
                    if (gap.count() > 0) std::this_thread::sleep_for(gap);
                    raw.push_back(chain.round_ns());
                }
            }
            if (gap.count() > 0) std::this_thread::sleep_for(gap);  // the workload: requests arrive 2 ms apart
            state.ResumeTiming();
        }
        auto t0 = Clock::now();
        benchmark::DoNotOptimize(h.queue_invoke([v = i++] { return v; }, cast_int).get());
        ns.push_back(ns_since(t0));
    }
    const double raw_p50 = percentile(raw, 0.5);
    state.counters["p50_us"] = percentile(ns, 0.5) / 1000;
    state.counters["p99_us"] = percentile(ns, 0.99) / 1000;
    state.counters["raw_p50_us"] = raw_p50 / 1000;
    state.counters["x_raw"] = percentile(ns, 0.5) / raw_p50;
}
template <class Policy>
void BM_RoundTripBackToBack(benchmark::State& state) {
    round_trip<Policy>(state, std::chrono::microseconds(0));
}
template <class Policy>
void BM_RoundTripEvery2ms(benchmark::State& state) {
    round_trip<Policy>(state, std::chrono::milliseconds(2));
}
BENCHMARK_TEMPLATE(BM_RoundTripBackToBack, DefaultPolicy)->Iterations(20000);
BENCHMARK_TEMPLATE(BM_RoundTripBackToBack, LightweightFuturePolicy)->Iterations(20000);
BENCHMARK_TEMPLATE(BM_RoundTripEvery2ms, DefaultPolicy)->Iterations(300);
BENCHMARK_TEMPLATE(BM_RoundTripEvery2ms, LightweightFuturePolicy)->Iterations(300);

// --- idle cost -------------------------------------------------------------------------

double process_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

void BM_IdleHandlersCpu(benchmark::State& state) {
    const auto count = static_cast<std::size_t>(state.range(0));
    std::vector<InvokeHandler> handlers;
    for (std::size_t i = 0; i < count; ++i) handlers.push_back(load("identity_batch", options(8, 2)));
    for (auto& h : handlers) h.queue_invoke([] { return 1; }, cast_int).get();  // every thread has run
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the brief idle spinning end
    double cpu = 0;
    double wall = 0;
    for (auto _ : state) {
        const double c0 = process_cpu_seconds();
        const auto t0 = Clock::now();
        std::this_thread::sleep_for(std::chrono::seconds(1));
        cpu += process_cpu_seconds() - c0;
        wall += std::chrono::duration<double>(Clock::now() - t0).count();
    }
    state.counters["cpu_pct_of_core"] = 100.0 * cpu / wall;
}
BENCHMARK(BM_IdleHandlersCpu)->Arg(64)->Iterations(1)->Unit(benchmark::kMillisecond);

// --- memory per pending item ------------------------------------------------------------

/// Bytes malloc has handed out, less the freed slabs kept for reuse
/// (detail::SlabCache): items carved from those take memory as much as new ones.
std::size_t bytes_in_use() {
    using pyscheduler::detail::Slab;
    using pyscheduler::detail::SlabCache;
    return mallinfo2().uordblks - SlabCache::instance().size() * Slab::kBytes;
}

template <class Policy>
void BM_MemoryPerPendingItem(benchmark::State& state) {
    const std::size_t items = static_cast<std::size_t>(state.range(0));
    auto gate = python().loadPythonModule("pyscheduler_bench_funcs", "open_gate");
    auto close = python().loadPythonModule("pyscheduler_bench_funcs", "close_gate");
    for (auto _ : state) {
        close.invoke<void>();
        auto h = load<Policy>("gated_identity", options(256, 1));
        std::vector<typename pyscheduler::BasicInvokeHandler<Policy>::template future<int>> futures;
        futures.reserve(items + 1);
        futures.push_back(h.queue_invoke([] { return 0; }, cast_int));  // blocks the executor in Python
        while (h.get_queue_stats().execute_queue_size != 0 || h.get_queue_stats().commit_queue_size != 0) {
            std::this_thread::yield();  // wait until the first item is inside Python
        }
        const std::size_t before = bytes_in_use();
        for (std::size_t i = 0; i < items; ++i) futures.push_back(h.queue_invoke([] { return 1; }, cast_int));
        const std::size_t after = bytes_in_use();
        state.counters["bytes_per_item"] = static_cast<double>(after - before) / static_cast<double>(items);
        gate.invoke<void>();
        for (auto& f : futures) f.get();
    }
}
BENCHMARK_TEMPLATE(BM_MemoryPerPendingItem, DefaultPolicy)->Arg(1000000)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_MemoryPerPendingItem, LightweightFuturePolicy)
    ->Arg(1000000)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

// --- several handlers at once -----------------------------------------------------------

template <class Policy>
void BM_MixedHandlers(benchmark::State& state) {
    using Handler = pyscheduler::BasicInvokeHandler<Policy>;
    std::vector<Handler> handlers;
    handlers.push_back(load<Policy>("identity_batch", options(256, 8)));
    handlers.push_back(load<Policy>("double_batch", options(64, 4)));
    handlers.push_back(load<Policy>("sum_batch", options(8, 4)));
    handlers.push_back(load<Policy>("identity_batch", options(1, 4)));
    const std::size_t per_handler = 20000;
    double raw_sum = 0;  // mean over the four handlers' limits, summed over iterations
    double seconds = 0;
    for (auto _ : state) {
        for (const char* fn : {"identity_batch", "double_batch", "sum_batch"}) {
            raw_sum += raw_batch_ns_per_item(fn, fn[0] == 'i' ? 256 : fn[0] == 'd' ? 64 : 8, per_handler) / 4;
        }
        raw_sum += raw_batch_ns_per_item("identity_batch", 1, per_handler) / 4;
        const auto t0 = Clock::now();
        std::vector<std::thread> producers;
        for (int p = 0; p < 2; ++p) {
            producers.emplace_back([&] {
                std::vector<typename Handler::template future<int>> futures;
                futures.reserve(per_handler * handlers.size() / 2);
                for (std::size_t i = 0; i < per_handler / 2; ++i) {
                    for (auto& h : handlers) futures.push_back(h.queue_invoke([v = int(i)] { return v; }, cast_int));
                }
                for (auto& f : futures) benchmark::DoNotOptimize(f.get());
            });
        }
        for (auto& t : producers) t.join();
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        state.SetIterationTime(s);
        seconds += s;
    }
    const double ns_per_item =
        seconds * 1e9 / static_cast<double>(per_handler * handlers.size() * state.iterations());
    state.counters["items_per_s"] = 1e9 / ns_per_item;
    state.counters["ns_per_item"] = ns_per_item;
    const double raw_ns = raw_sum / static_cast<double>(state.iterations());
    state.counters["raw_ns_per_item"] = raw_ns;
    state.counters["x_raw"] = ns_per_item / raw_ns;
}
BENCHMARK_TEMPLATE(BM_MixedHandlers, DefaultPolicy)->Iterations(3)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_MixedHandlers, LightweightFuturePolicy)
    ->Iterations(3)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// --- parallel pure Python: two handlers, one GIL each --------------------------------------

auto cast_long_long = [](py::object o) { return o.cast<long long>(); };

/// Seconds for `items` batch-1 items of spin_one(n), queued at once, dealt to
/// `handlers` in turn; returns when every one has completed.
template <class Policy>
double spin_seconds(std::vector<pyscheduler::BasicInvokeHandler<Policy>>& handlers, int items, int n) {
    const auto t0 = Clock::now();
    std::vector<typename pyscheduler::BasicInvokeHandler<Policy>::template future<long long>> futures;
    futures.reserve(static_cast<std::size_t>(items));
    for (int i = 0; i < items; ++i) {
        futures.push_back(handlers[static_cast<std::size_t>(i) % handlers.size()].queue_invoke([n] { return n; },
                                                                                               cast_long_long));
    }
    for (auto& f : futures) benchmark::DoNotOptimize(f.get());
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// `count` handlers of pyscheduler_bench_funcs.spin, batch 1, prefetch `prefetch`, of
/// `kind` with `workers`.
template <class Policy = DefaultPolicy>
std::vector<pyscheduler::BasicInvokeHandler<Policy>> spin_handlers(std::size_t count, pyscheduler::InterpreterKind kind,
                                                                   std::size_t workers = 1, std::size_t prefetch = 8) {
    HandlerOptions o = options(1, prefetch);
    o.interpreter = kind;
    o.workers = workers;
    std::vector<pyscheduler::BasicInvokeHandler<Policy>> handlers;
    for (std::size_t i = 0; i < count; ++i) handlers.push_back(load<Policy>("spin", o));
    return handlers;
}

/// Main: the two handlers share the main GIL and take turns. OwnGil: each runs in a
/// sub-interpreter with its own GIL. speedup = Main time / OwnGil time (limit: 2 on
/// two cores). Compare with tests/bench/compare_pools.py (Python's own pools).
void BM_PurePythonTwoHandlers(benchmark::State& state) {
#if PY_VERSION_HEX < 0x030C0000
    state.SkipWithError("own-GIL sub-interpreters need CPython 3.12+");
#else
    constexpr int kItems = 400;
    constexpr int kN = 20000;
    auto main = spin_handlers(2, pyscheduler::InterpreterKind::Main);
    auto own = spin_handlers(2, pyscheduler::InterpreterKind::OwnGil);
    double main_s = 0;
    double own_s = 0;
    for (auto _ : state) {
        const double m = spin_seconds(main, kItems, kN);
        const double o = spin_seconds(own, kItems, kN);
        state.SetIterationTime(o);
        main_s += m;
        own_s += o;
    }
    const double iterations = static_cast<double>(state.iterations());
    state.counters["main_items_per_s"] = kItems * iterations / main_s;
    state.counters["own_gil_items_per_s"] = kItems * iterations / own_s;
    state.counters["speedup"] = main_s / own_s;
#endif
}
BENCHMARK(BM_PurePythonTwoHandlers)->Iterations(3)->UseManualTime()->Unit(benchmark::kMillisecond);

// --- worker pools (HandlerOptions::workers) ---------------------------------------------

/// Python's own pools on `items` items of spin_one(n), run by compare_pools.py in a
/// child process of this build's Python: seconds per row ("loop", "threads",
/// "pool_chunksize_1", "pool_chunksize_auto").
std::map<std::string, double> python_pools_seconds(int items, int n) {
    pyscheduler::detail::GilHold gil;
    py::module_ subprocess = py::module_::import("subprocess");
    py::object sys = py::module_::import("sys");
    const std::string script = std::string(PYSCHEDULER_BENCH_DIR) + "/compare_pools.py";
    py::object out = subprocess.attr("run")(
        py::make_tuple(sys.attr("executable"), script, std::to_string(items), std::to_string(n), "--json"),
        py::arg("capture_output") = true, py::arg("text") = true, py::arg("check") = true);
    return py::module_::import("json").attr("loads")(out.attr("stdout")).cast<std::map<std::string, double>>();
}

/// Issue #14, benchmark 1: CPU-bound pure Python, batch 1, items of about 150-250 us,
/// queued at once (LightweightFuturePolicy, prefetch 32: each row in the configuration
/// that serves it best). One handler with two own-GIL workers, against one
/// worker, two hand-made own-GIL handlers, and Python's own pools on the same items;
/// each round measures all of them. *_per_s: items per second of each row, the same
/// work throughout; speedup_pool: one worker's time / the pool's; pool_util: the
/// fraction of the pool's wall time its two workers spent inside batches.
void BM_PoolPurePython(benchmark::State& state) {
#if PY_VERSION_HEX < 0x030C0000
    state.SkipWithError("own-GIL sub-interpreters need CPython 3.12+");
#else
    constexpr int kItems = 2000;
    constexpr int kN = 4000;
    using Policy = LightweightFuturePolicy;
    auto one = spin_handlers<Policy>(1, pyscheduler::InterpreterKind::OwnGil, 1, 32);
    auto pool = spin_handlers<Policy>(1, pyscheduler::InterpreterKind::OwnGil, 2, 32);
    auto two = spin_handlers<Policy>(2, pyscheduler::InterpreterKind::OwnGil, 1, 32);
    auto busy_seconds = [&pool] {
        double ns = 0;
        for (const auto& w : pool[0].get_queue_stats().workers) ns += static_cast<double>(w.busy_ns);
        return ns * 1e-9;
    };
    std::map<std::string, double> sum;  // seconds per row, over all rounds
    for (auto _ : state) {
        sum["one"] += spin_seconds(one, kItems, kN);
        const double busy_before = busy_seconds();
        const double p = spin_seconds(pool, kItems, kN);
        sum["pool"] += p;
        sum["pool_busy"] += busy_seconds() - busy_before;
        sum["two_h"] += spin_seconds(two, kItems, kN);
        state.SetIterationTime(p);
        for (const auto& [row, seconds] : python_pools_seconds(kItems, kN)) sum["py_" + row] += seconds;
    }
    const double items = kItems * static_cast<double>(state.iterations());
    for (const char* row : {"one", "pool", "two_h", "py_loop", "py_threads", "py_pool_chunksize_1",
                            "py_pool_chunksize_auto"}) {
        state.counters[std::string(row) + "_per_s"] = items / sum[row];
    }
    state.counters["item_us"] = sum["one"] / items * 1e6;
    state.counters["speedup_pool"] = sum["one"] / sum["pool"];
    state.counters["pool_util"] = sum["pool_busy"] / (2 * sum["pool"]);
#endif
}
BENCHMARK(BM_PoolPurePython)->Iterations(5)->UseManualTime()->Unit(benchmark::kMillisecond);

/// Issue #14, benchmark 2: numpy work that releases the GIL (a 256x256 matrix product
/// per item, BLAS on one thread), batch 1: two Main workers against one.
void BM_PoolNumpyMain(benchmark::State& state) {
    constexpr int kItems = 300;
    HandlerOptions o = options(1, 2);
    auto one = python().loadPythonModule("pyscheduler_bench_numpy", "matmul", o);
    o.workers = 2;
    auto pool = python().loadPythonModule("pyscheduler_bench_numpy", "matmul", o);
    auto run = [](InvokeHandler& h) {
        const auto t0 = Clock::now();
        std::vector<std::future<double>> futures;
        for (int i = 0; i < kItems; ++i) {
            futures.push_back(h.queue_invoke([i] { return i; }, [](py::object r) { return r.cast<double>(); }));
        }
        for (auto& f : futures) benchmark::DoNotOptimize(f.get());
        return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    double one_s = 0;
    double pool_s = 0;
    for (auto _ : state) {
        one_s += run(one);
        const double p = run(pool);
        pool_s += p;
        state.SetIterationTime(p);
    }
    state.counters["item_us"] = one_s / (kItems * static_cast<double>(state.iterations())) * 1e6;
    state.counters["speedup_pool"] = one_s / pool_s;
}
BENCHMARK(BM_PoolNumpyMain)->Iterations(3)->UseManualTime()->Unit(benchmark::kMillisecond);

/// Issue #14, benchmark 3: batch-1 round trips (queue_invoke(...).get()) through a
/// handler with two Main workers against one with one worker, in alternating blocks
/// of 500 (back to back) or alternating single requests (2 ms apart).
/// x_one_worker: the pool's p50 / the single worker's p50 (target <= 1.2).
template <class Policy>
void pool_round_trip(benchmark::State& state, std::chrono::microseconds gap) {
    auto one = load<Policy>("identity_batch", options(1, 1));
    HandlerOptions o = options(1, 1);
    o.workers = 2;
    auto pool = load<Policy>("identity_batch", o);
    const int block = gap.count() > 0 ? 1 : 500;
    std::vector<double> one_ns, pool_ns;
    int i = 0;
    for (auto _ : state) {
        for (auto* h : {&one, &pool}) {
            auto& out = h == &one ? one_ns : pool_ns;
            for (int r = 0; r < block; ++r) {
                if (gap.count() > 0) std::this_thread::sleep_for(gap);
                const auto t0 = Clock::now();
                benchmark::DoNotOptimize(h->queue_invoke([v = i++] { return v; }, cast_int).get());
                out.push_back(ns_since(t0));
            }
        }
    }
    state.counters["one_p50_us"] = percentile(one_ns, 0.5) / 1000;
    state.counters["pool_p50_us"] = percentile(pool_ns, 0.5) / 1000;
    state.counters["pool_p99_us"] = percentile(pool_ns, 0.99) / 1000;
    state.counters["x_one_worker"] = percentile(pool_ns, 0.5) / percentile(one_ns, 0.5);
}
template <class Policy>
void BM_PoolRoundTripBackToBack(benchmark::State& state) {
    pool_round_trip<Policy>(state, std::chrono::microseconds(0));
}
template <class Policy>
void BM_PoolRoundTripEvery2ms(benchmark::State& state) {
    pool_round_trip<Policy>(state, std::chrono::milliseconds(2));
}
BENCHMARK_TEMPLATE(BM_PoolRoundTripBackToBack, DefaultPolicy)->Iterations(20);
BENCHMARK_TEMPLATE(BM_PoolRoundTripBackToBack, LightweightFuturePolicy)->Iterations(20);
BENCHMARK_TEMPLATE(BM_PoolRoundTripEvery2ms, DefaultPolicy)->Iterations(300);
BENCHMARK_TEMPLATE(BM_PoolRoundTripEvery2ms, LightweightFuturePolicy)->Iterations(300);

}  // namespace

BENCHMARK_MAIN();
