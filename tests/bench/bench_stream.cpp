// Streams (InvokeHandler::stream): per-element cost against a raw pybind11 next()
// loop over the same generator, measured in the same iteration; time to the first
// element for short and very long generators; memory while 10 million elements go to
// a slow reader.
//
//   ./configure.sh --bench        (Release build; runs this after pyscheduler_bench_graph)
#include <benchmark/benchmark.h>
#include <pyscheduler/pyscheduler.hpp>

#include "bench_support.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

namespace py = pybind11;
using pyscheduler::InvokeHandler;
using pyscheduler::StreamOptions;
using Clock = std::chrono::steady_clock;

namespace {

using pyscheduler::bench::python;

InvokeHandler& counting() {
    static InvokeHandler h = python().loadPythonModule("pyscheduler_bench_stream", "counting");
    return h;
}

double ns_since(Clock::time_point t0) { return std::chrono::duration<double, std::nano>(Clock::now() - t0).count(); }

/// The raw limit: a pybind11 loop over the generator on this thread, GIL held.
long raw_loop(long n) {
    python();  // starts the interpreter
    pyscheduler::detail::GilHold gil;
    py::object gen = py::module_::import("pyscheduler_bench_stream").attr("generator")(n);
    long sum = 0;
    for (py::handle x : gen) sum += x.cast<long>();
    return sum;
}

long stream_loop(long n, std::size_t buffer) {
    StreamOptions o;
    o.buffer = buffer;
    auto s = counting().stream<long>(o, [n] { return n; });
    long sum = 0;
    for (long x : s) sum += x;
    return sum;
}

/// Per element, stream vs raw loop, alternating within each iteration (the VM's
/// load swings; both sides see the same swings). Arg: buffer size.
void BM_StreamPerElement(benchmark::State& state) {
    constexpr long kElements = 200000;
    const auto buffer = static_cast<std::size_t>(state.range(0));
    double raw_ns = 0, stream_ns = 0;
    for (auto _ : state) {
        auto t0 = Clock::now();
        benchmark::DoNotOptimize(raw_loop(kElements));
        raw_ns += ns_since(t0);
        t0 = Clock::now();
        benchmark::DoNotOptimize(stream_loop(kElements, buffer));
        stream_ns += ns_since(t0);
    }
    const double per = static_cast<double>(state.iterations()) * kElements;
    state.counters["raw_ns_per_elem"] = raw_ns / per;
    state.counters["stream_ns_per_elem"] = stream_ns / per;
    state.counters["stream/raw"] = stream_ns / raw_ns;
}
BENCHMARK(BM_StreamPerElement)->Arg(16)->Arg(256)->Arg(4096)->Unit(benchmark::kMillisecond)->MinTime(2.0);

/// From stream() to the first element, for a generator of 10 and of 10^12 elements
/// (it is never run to its end: the stream is closed after the first element).
void BM_StreamFirstElement(benchmark::State& state) {
    const long n = state.range(0);
    double first_ns = 0;
    for (auto _ : state) {
        const auto t0 = Clock::now();
        auto s = counting().stream<long>([n] { return n; });
        benchmark::DoNotOptimize(s.next());
        first_ns += ns_since(t0);
        s.close();
    }
    state.counters["first_element_us"] = first_ns / 1000.0 / static_cast<double>(state.iterations());
}
BENCHMARK(BM_StreamFirstElement)->Arg(10)->Arg(1000000000000L)->Unit(benchmark::kMicrosecond);

long resident_kib() {
    std::ifstream statm("/proc/self/statm");
    long pages = 0, resident = 0;
    statm >> pages >> resident;
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/// 10 million elements to a reader slower than the generator: resident memory,
/// sampled every 100 000 elements, grows while the first million warm up (the
/// threads' malloc arenas, the buffer's blocks) and not after: `rss_warmup_kib` is the
/// growth up to element 10^6, `rss_after_kib` the largest growth past it.
void BM_StreamTenMillionToASlowReader(benchmark::State& state) {
    constexpr long kElements = 10000000;
    long warmup = 0, after = 0;
    for (auto _ : state) {
        const long before = resident_kib();
        long at_million = before, peak = before;
        auto s = counting().stream<long>([] { return kElements; });
        long sum = 0, count = 0;
        for (long x : s) {
            for (int i = 0; i < 300; ++i) benchmark::DoNotOptimize(sum += x ^ i);  // the slow reader
            if (++count % 100000 != 0) continue;
            const long now = resident_kib();
            if (count == 1000000) at_million = now;
            if (count > 1000000) peak = std::max(peak, now);
        }
        if (count != kElements) state.SkipWithError("lost elements");
        warmup = std::max(warmup, at_million - before);
        after = std::max(after, peak - at_million);
    }
    state.counters["rss_warmup_kib"] = static_cast<double>(warmup);
    state.counters["rss_after_kib"] = static_cast<double>(after);
}
BENCHMARK(BM_StreamTenMillionToASlowReader)->Unit(benchmark::kMillisecond)->Iterations(1);

}  // namespace

BENCHMARK_MAIN();
