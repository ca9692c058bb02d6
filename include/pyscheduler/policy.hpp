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

    /// How a stage that finds no work waits for it: it polls idle_spins times in a
    /// row, then polls again after each of idle_yields std::this_thread::yield()
    /// calls, and then parks in the kernel until woken (so idle handlers cost no CPU).
    /// Yielding beats spinning: a spinning stage keeps the core that the thread it
    /// waits for, or the caller about to be woken, needs. On a 2-core machine the
    /// defaults made a batch-1 round trip 6-8 us back to back (10000 spins: 6 or 14 us,
    /// depending on where the threads landed) and 18-21 us with 2 ms between requests
    /// (10000 spins: 34-41 us), with the same throughput; see README, Performance.
    static constexpr int idle_spins = 0;
    static constexpr int idle_yields = 10;

    /// Then, in microseconds: a stage whose recent waits for work were this short or
    /// shorter keeps polling (yielding between polls) for up to twice their average,
    /// at most this long, before it parks. Back-to-back requests then find the stages
    /// awake instead of paying a wake-up per stage; a stage whose waits are longer (an
    /// idle handler, requests milliseconds apart) parks after the polls above, so
    /// idle handlers still cost no CPU. 0 turns it off.
    static constexpr int idle_adaptive_us = 50;

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
