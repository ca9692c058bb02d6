// multithreaded: four producer threads feed two handlers whose Python function
// sleeps 10 ms per call (like I/O, or a model that releases the GIL). Batching turns
// many items into one call, and the two handlers' executors overlap their calls.
#include <pybind11/stl.h>  // std::vector <-> list
#include <pyscheduler/pyscheduler.hpp>

#include <chrono>
#include <iostream>
#include <thread>
#include <vector>

namespace py = pybind11;
using Clock = std::chrono::steady_clock;

constexpr int kProducers = 4;
constexpr int kItemsPerProducer = 40;

int main() {
    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);

    // Sequential baseline: one synchronous call per item.
    auto sync = python.loadPythonModule("sleepy", "slow_double");
    const auto t0 = Clock::now();
    long expected = 0;
    for (int i = 0; i < kProducers * kItemsPerProducer; ++i) {
        expected += sync.invoke([](py::object r) { return r.cast<std::vector<long>>()[0]; }, std::vector<long>{i});
    }
    const double sequential_s = std::chrono::duration<double>(Clock::now() - t0).count();

    // Pipeline: two handlers, batches of up to 8, four producers.
    pyscheduler::HandlerOptions options;
    options.batch_size = 8;
    options.prefetch_depth = 2;
    auto a = python.loadPythonModule("sleepy", "slow_double", options);
    auto b = python.loadPythonModule("sleepy", "slow_double", options);

    const auto t1 = Clock::now();
    std::vector<std::thread> producers;
    std::vector<long> sums(kProducers, 0);
    for (int p = 0; p < kProducers; ++p) {
        producers.emplace_back([&, p] {
            auto& handler = p % 2 ? a : b;
            std::vector<std::future<long>> futures;
            for (int i = 0; i < kItemsPerProducer; ++i) {
                long value = p * kItemsPerProducer + i;
                futures.push_back(handler.queue_invoke([value] { return value; },
                                                       [](py::object r) { return r.cast<long>(); }));
            }
            for (auto& f : futures) sums[p] += f.get();
        });
    }
    for (auto& t : producers) t.join();
    const double pipeline_s = std::chrono::duration<double>(Clock::now() - t1).count();

    long total = 0;
    for (long s : sums) total += s;
    std::cout << kProducers * kItemsPerProducer << " items, Python sleeps 10 ms per call\n"
              << "  sequential invoke: " << sequential_s << " s\n"
              << "  4 producers, 2 handlers, batch 8: " << pipeline_s << " s\n"
              << "  speed-up: " << sequential_s / pipeline_s << "x; mean batch sizes "
              << a.get_queue_stats().execute_batch_size_ema << " and " << b.get_queue_stats().execute_batch_size_ema
              << "\n";
    if (total != expected) {
        std::cout << "  MISMATCH: " << total << " != " << expected << "\n";
        return 1;
    }
    std::cout << "  results match the sequential run\n";
    return 0;
}
