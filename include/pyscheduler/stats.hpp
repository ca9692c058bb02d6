// pyscheduler/stats.hpp - a snapshot of one handler's pipeline.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyscheduler {

/// A histogram's counts at one moment, in the shape Prometheus exposes: `bounds[i]`
/// is bucket i's upper bound ("le"), `cumulative[i]` the observations <= it, and
/// `count` (the +Inf bucket) every observation.
struct HistogramSnapshot {
    std::vector<double> bounds;
    std::vector<std::uint64_t> cumulative;
    std::uint64_t count = 0;
    double sum = 0;
};

/// Fixed buckets, lock-free observe() from any number of threads (one atomic add per
/// bucket hit, a compare-exchange for the sum). A snapshot taken while observations
/// land may be off by those in flight, as with any Prometheus client.
class Histogram {
public:
    /// `bounds`: the buckets' upper bounds, strictly increasing and finite (the +Inf
    /// bucket is implicit); otherwise std::invalid_argument.
    explicit Histogram(std::vector<double> bounds)
        : bounds_(std::move(bounds)), counts_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1)) {
        for (std::size_t i = 0; i < bounds_.size(); ++i) {
            if (!std::isfinite(bounds_[i]) || (i > 0 && !(bounds_[i - 1] < bounds_[i]))) {
                throw std::invalid_argument("pyscheduler::Histogram: bucket bounds must be finite and strictly "
                                            "increasing (bound " + std::to_string(i) + " is not)");
            }
        }
    }

    /// `count` bounds: start, start * factor, ... (start > 0, factor > 1).
    static std::vector<double> exponential(double start, double factor, std::size_t count) {
        if (!(start > 0) || !(factor > 1)) {
            throw std::invalid_argument("pyscheduler::Histogram::exponential: needs start > 0 and factor > 1");
        }
        std::vector<double> b(count);
        for (std::size_t i = 0; i < count; ++i) b[i] = i == 0 ? start : b[i - 1] * factor;
        return b;
    }

    /// Seconds from 10 µs to 10 s, 1-2.5-5 per decade: the buckets of the handlers'
    /// latency histograms.
    static std::vector<double> latency_seconds() {
        std::vector<double> b;
        for (double decade = 1e-5; decade < 10; decade *= 10) {
            for (double m : {1.0, 2.5, 5.0}) b.push_back(m * decade);
        }
        b.push_back(10);
        return b;
    }

    void observe(double value) noexcept {
        const auto bucket = static_cast<std::size_t>(
            std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());  // first bound >= value
        counts_[bucket].fetch_add(1, std::memory_order_relaxed);
        double old = sum_.load(std::memory_order_relaxed);
        while (!sum_.compare_exchange_weak(old, old + value, std::memory_order_relaxed)) {
        }
    }

    HistogramSnapshot snapshot() const {
        HistogramSnapshot s;
        s.bounds = bounds_;
        s.cumulative.resize(bounds_.size());
        std::uint64_t running = 0;
        for (std::size_t i = 0; i < bounds_.size(); ++i) {
            running += counts_[i].load(std::memory_order_relaxed);
            s.cumulative[i] = running;
        }
        s.count = running + counts_[bounds_.size()].load(std::memory_order_relaxed);
        s.sum = sum_.load(std::memory_order_relaxed);
        return s;
    }

private:
    std::vector<double> bounds_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> counts_;  // bounds_.size() + 1: the last is +Inf
    std::atomic<double> sum_{0};
};

/// One worker of a handler (see HandlerOptions::workers).
struct WorkerStats {
    std::uint64_t batches = 0;  ///< Python calls it has made
    std::uint64_t items = 0;    ///< items it has finished (values and errors)
    std::uint64_t busy_ns = 0;  ///< wall time inside its batches (GIL wait, conversions, Python call,
                                ///< callbacks; the futures are fulfilled after); stays 0 when the
                                ///< policy disables statistics
};

/// Returned by `InvokeHandler::get_queue_stats()`. Counters are read without
/// stopping the pipeline, so the sizes are approximate while work is in flight.
/// Averages are exponential moving averages over batches (weight set by the policy);
/// they stay zero when the policy disables statistics.
struct QueueStats {
    std::size_t commit_queue_size = 0;   ///< queued items not yet committed
    std::size_t execute_queue_size = 0;  ///< committed items waiting for the executor
    std::size_t waiting = 0;             ///< items waiting for their inputs (futures passed as
                                         ///< arguments), not yet queued
    std::uint64_t total_enqueued = 0;    ///< items ever queued (a dependent item once its inputs are in)
    std::uint64_t completed = 0;         ///< futures fulfilled with a value
    std::uint64_t failed = 0;            ///< futures fulfilled with an exception
    std::uint64_t timed_out = 0;         ///< of those, items whose deadline passed before they ran
    std::uint64_t producer_yields = 0;   ///< times a producer gave up its core to the commit thread
                                         ///< (it staged nothing for 256 items while the ring ran low)
    double commit_batch_size_ema = 0;    ///< items per commit bulk
    double execute_batch_size_ema = 0;   ///< items per Python call
    double commit_ns_per_batch_ema = 0;  ///< wall time of one commit bulk
    double execute_ns_per_batch_ema = 0; ///< wall time of one batch, GIL hold included
    std::vector<WorkerStats> workers;    ///< one entry per worker, in worker order
    HistogramSnapshot batch_sizes;       ///< items per Python call (buckets 1, 2, 4 ... batch_size)
    HistogramSnapshot batch_seconds;     ///< wall time of each batch (as execute_ns_per_batch_ema);
                                         ///< empty when the policy disables statistics
    HistogramSnapshot item_seconds;      ///< HandlerOptions::measure_latency: each item that reached
                                         ///< Python, from being queued to the end of its batch; else empty
};

}  // namespace pyscheduler
