// small_items: hundreds of thousands of tiny items through one handler, first with
// the default std::future, then with LightweightFuturePolicy's pyscheduler::Future.
// With items this small the future itself is the largest per-item cost: fulfilling
// a std::promise makes a system call (libstdc++), a pyscheduler::Future does not.
#include <pyscheduler/pyscheduler.hpp>

#include <chrono>
#include <iostream>
#include <vector>

namespace py = pybind11;
using Clock = std::chrono::steady_clock;

constexpr int kItems = 300000;

/// Queues kItems items on `handler`, collects every result; returns items per second,
/// or -1 when a result is wrong.
template <class Handler>
double items_per_second(Handler& handler) {
    std::vector<typename Handler::template future<long>> futures;  // std::future or pyscheduler::Future
    futures.reserve(kItems);
    const auto t0 = Clock::now();
    for (long i = 0; i < kItems; ++i) {
        futures.push_back(handler.queue_invoke([i] { return i; }, [](py::object r) { return r.cast<long>(); }));
    }
    for (long i = 0; i < kItems; ++i) {
        if (futures[i].get() != 3 * i) return -1;
    }
    return kItems / std::chrono::duration<double>(Clock::now() - t0).count();
}

int main() {
    pyscheduler::HandlerOptions options;
    options.batch_size = 256;
    options.prefetch_depth = 4;

    pyscheduler::PyManager python;  // DefaultPolicy: std::future
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);
    auto standard = python.loadPythonModule("scale", "scale", options);

    pyscheduler::BasicPyManager<pyscheduler::LightweightFuturePolicy> light;  // the same interpreter
    auto lightweight = light.loadPythonModule("scale", "scale", options);

    const double with_std = items_per_second(standard);
    const double with_light = items_per_second(lightweight);
    if (with_std < 0 || with_light < 0) {
        std::cout << "MISMATCH: a result was wrong\n";
        return 1;
    }
    std::cout << kItems << " items, batches of 256\n"
              << "  std::future:         " << with_std / 1e6 << " M items/s\n"
              << "  pyscheduler::Future: " << with_light / 1e6 << " M items/s (" << with_light / with_std << "x)\n"
              << "  every result checked\n";
    return 0;
}
