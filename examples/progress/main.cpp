// A long map with a live terminal progress bar: InvokeHandler::map puts every item in
// one Group, whose progress callback (rate-limited, never under the GIL, one call at a
// time, the last one when the group finishes) draws the bar: items done, items/s, ETA.
// Halfway through a second map, its group is cancelled: the items not yet in Python
// fail with Cancelled, the first map's results are untouched.
#include <pyscheduler/pyscheduler.hpp>

#include <chrono>
#include <cstdio>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

/// Draws "[#####.....]  45%  123456/274000  81234 items/s  ETA 1.9 s" on one line.
void draw(const pyscheduler::GroupProgress& p, Clock::time_point start) {
    constexpr int kWidth = 30;
    const std::size_t finished = p.done + p.failed + p.cancelled;
    const double fraction = p.total ? static_cast<double>(finished) / static_cast<double>(p.total) : 1.0;
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const double rate = seconds > 0 ? static_cast<double>(finished) / seconds : 0.0;
    const double eta = rate > 0 ? static_cast<double>(p.total - finished) / rate : 0.0;
    char bar[kWidth + 1];
    const int filled = static_cast<int>(fraction * kWidth);
    for (int i = 0; i < kWidth; ++i) bar[i] = i < filled ? '#' : '.';
    bar[kWidth] = '\0';
    std::printf("\r[%s] %3.0f%%  %zu/%zu  %.0f items/s  ETA %.1f s ", bar, fraction * 100, finished, p.total, rate,
                eta);
    if (p.finished()) std::printf("\n");
    std::fflush(stdout);
}

}  // namespace

int main() {
    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);
    pyscheduler::HandlerOptions o;
    o.batch_size = 64;
    o.prefetch_depth = 4;
    auto work = python.loadPythonModule("progress_module", "work", o);

    std::vector<int> inputs(200000, 40);  // each item: sum of squares below 40
    const auto start = Clock::now();
    auto job = work.map(inputs, [](int n) { return n; }, [](pybind11::object r) { return r.cast<long>(); });
    job.group.on_progress([start](const pyscheduler::GroupProgress& p) { draw(p, start); },
                          std::chrono::milliseconds(50));
    job.group.wait();
    long checksum = 0;
    for (auto& f : job.futures) checksum += f.get();
    std::printf("%zu items, checksum %ld (expected %ld)\n", inputs.size(), checksum, 20540L * 200000);

    // The same work again, cancelled when about half of it is done.
    auto second = work.map(inputs, [](int n) { return n; }, [](pybind11::object r) { return r.cast<long>(); });
    while (second.group.progress().done < inputs.size() / 2) second.group.next_completed();
    second.group.cancel();
    second.group.wait();
    const pyscheduler::GroupProgress p = second.group.progress();
    std::printf("cancelled half-way: %zu done, %zu cancelled, %zu failed, of %zu\n", p.done, p.cancelled, p.failed,
                p.total);
    return checksum == 20540L * 200000 && p.cancelled > 0 && p.done + p.cancelled == p.total ? 0 : 1;
}
