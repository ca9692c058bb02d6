// pyscheduler/policy.hpp - compile-time choices of BasicPyManager<Policy>.
#pragma once

#include <chrono>
#include <future>

namespace pyscheduler {

template <class R>
class Future;  // pyscheduler/future.hpp

/// The policy `PyManager` uses. Write your own struct with the same members to change
/// them; every handler of a `BasicPyManager<YourPolicy>` follows it.
struct DefaultPolicy {
    /// Clock for `max_batch_delay` deadlines and per-batch timings.
    using clock = std::chrono::steady_clock;

    /// Whether handlers time their batches and keep moving averages. The counters of
    /// `QueueStats` (sizes, totals) are always kept; turning this off saves two clock
    /// reads per batch on each stage.
    static constexpr bool collect_stats = true;

    /// Weight of the newest batch in the moving averages of `QueueStats`.
    static constexpr double stats_ema_weight = 0.1;

    /// How many times an idle stage spins on its semaphore before it parks in the
    /// kernel. Spinning shortens the wake-up of a stage that is about to get work;
    /// parking makes idle handlers cost no CPU.
    static constexpr int idle_spins = 10000;

    /// What queue_invoke returns for a callback result R: std::future<R>, or
    /// pyscheduler::Future<R> (see LightweightFuturePolicy). A policy without this
    /// member gets std::future.
    template <class R>
    using future = std::future<R>;
};

/// DefaultPolicy, except that queue_invoke returns pyscheduler::Future<R>: the same
/// get/wait/wait_for/wait_until/valid, no share(), and no system call per item to
/// make the result ready (libstdc++'s std::promise makes one). The higher-throughput
/// choice when a handler moves hundreds of thousands of small items a second.
struct LightweightFuturePolicy : DefaultPolicy {
    template <class R>
    using future = Future<R>;
};

}  // namespace pyscheduler
