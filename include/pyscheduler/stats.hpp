// pyscheduler/stats.hpp - a snapshot of one handler's pipeline.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pyscheduler {

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
    double commit_batch_size_ema = 0;    ///< items per commit bulk
    double execute_batch_size_ema = 0;   ///< items per Python call
    double commit_ns_per_batch_ema = 0;  ///< wall time of one commit bulk
    double execute_ns_per_batch_ema = 0; ///< wall time of one batch, GIL hold included
    std::vector<WorkerStats> workers;    ///< one entry per worker, in worker order
};

}  // namespace pyscheduler
