// pyscheduler/detail/idle_budget.hpp - how a waiting thread learns how long to poll
// before it parks. Shared by the pipeline's stages (waits for work) and by the threads
// that wait for pyscheduler::Future results.
#pragma once

#include <algorithm>
#include <chrono>
#include <thread>

namespace pyscheduler::detail {

/// What one waiting thread has learned about its waits: a moving average of how long
/// they lasted. While that is at most `LimitUs` microseconds, the thread keeps polling
/// for up to twice as long (at most `LimitUs`) before it parks, so work that follows
/// the last by a few microseconds finds it awake instead of paying for a wake-up; a
/// thread whose waits are longer (an idle handler, requests milliseconds apart, slow
/// results) parks after its fixed polls. Owned by the waiting thread; not shared.
template <int LimitUs>
class BasicIdleBudget {
public:
    using clock = std::chrono::steady_clock;

    /// Extra polling time before parking: 0 unless recent waits were short.
    clock::duration poll_for() const noexcept {
        return average_ <= kLimit ? std::min(2 * average_, clock::duration(kLimit)) : clock::duration::zero();
    }
    void observe(clock::duration waited) noexcept { average_ += (waited - average_) / 4; }

private:
    static constexpr std::chrono::microseconds kLimit{LimitUs};
    clock::duration average_ = 2 * kLimit + std::chrono::microseconds(1);  // as if idle: no extra polling yet
};

/// The polling half of every wait: while `got` is falsy, yields the core and then polls
/// `attempt` (non-blocking; returns what it took, falsy for nothing), `yields` times.
template <class Attempt, class Got>
void yield_and_poll(Attempt& attempt, Got& got, int yields) {
    for (int i = 0; !got && i < yields; ++i) {
        std::this_thread::yield();
        got = attempt();
    }
}

/// The same for as long as the steady clock reads before `until` (a budget's polling).
template <class Attempt, class Got>
void yield_and_poll_until(Attempt& attempt, Got& got, std::chrono::steady_clock::time_point until) {
    while (!got && std::chrono::steady_clock::now() < until) {
        std::this_thread::yield();
        got = attempt();
    }
}

}  // namespace pyscheduler::detail
