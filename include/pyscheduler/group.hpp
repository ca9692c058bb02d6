// pyscheduler/group.hpp - Group: items of any handlers tracked as one unit
// (progress, wait, completion order, cancel), and Mapped<R>, what
// InvokeHandler::map returns.
//
// An item joins a group through ItemOptions::group when it is queued. The item
// reports to the group when it completes (Task::complete, on the thread that
// completes it, without the GIL), after its future is fulfilled; a cancelled group is
// checked where deadlines are, when the commit thread takes the item and when an
// executor takes it from the prefetch ring.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "pyscheduler/future.hpp"

namespace pyscheduler {

/// A snapshot of a group's members: how many completed with a value, failed, were
/// cancelled, out of how many joined so far.
struct GroupProgress {
    std::size_t done = 0;
    std::size_t failed = 0;
    std::size_t cancelled = 0;
    std::size_t total = 0;
    /// Every member that joined so far has completed.
    bool finished() const noexcept { return done + failed + cancelled == total; }
};

namespace detail {

/// What a group's members and handles share. Reference-counted: the handles and every
/// member not yet completed hold one.
class GroupState {
public:
    enum class Outcome { Value, Failed, Cancelled };

    GroupState() = default;
    GroupState(const GroupState&) = delete;
    GroupState& operator=(const GroupState&) = delete;

    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

    /// `n` new members: the first one's index (joining order); one reference each.
    std::uint32_t join(std::size_t n = 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (completed_.capacity() < progress_.total + n) {  // member_done never allocates
            completed_.reserve(std::max({std::size_t{16}, 2 * completed_.capacity(), progress_.total + n}));
        }
        refs_.fetch_add(static_cast<int>(n), std::memory_order_relaxed);
        reported_final_ = final_returned_ = false;
        const auto first = static_cast<std::uint32_t>(progress_.total);
        progress_.total += n;
        return first;
    }

    /// Takes back `n` members joined but never queued (map stopped by an exception).
    void unjoin(std::size_t n) noexcept {
        bool wake;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            progress_.total -= n;
            wake = progress_.finished();
        }
        if (wake) changed_.notify_all();
        refs_.fetch_sub(static_cast<int>(n), std::memory_order_relaxed);  // the handles still hold theirs
    }

    bool cancelled() const noexcept { return cancelled_.load(std::memory_order_acquire); }
    void cancel() noexcept { cancelled_.store(true, std::memory_order_release); }

    /// What a completed member tells its group (state null: not a member).
    struct Report {
        GroupState* state = nullptr;
        std::uint32_t index = 0;
        Outcome outcome = Outcome::Value;
    };

    /// Members completed (their futures are fulfilled): each run of reports to one
    /// group is taken under one lock (an executor reports a whole batch at once).
    static void report(const Report* reports, std::size_t n) noexcept {
        for (std::size_t first = 0; first < n;) {
            std::size_t last = first + 1;
            while (last < n && reports[last].state == reports[first].state) ++last;
            if (reports[first].state) reports[first].state->members_done(reports + first, last - first);
            first = last;
        }
    }

    void set_on_progress(std::function<void(const GroupProgress&)> callback, std::chrono::milliseconds interval) {
        std::lock_guard<std::mutex> report_lock(report_mutex_);
        std::lock_guard<std::mutex> lock(mutex_);
        on_progress_ = std::move(callback);
        interval_ = interval;
        reported_final_ = final_returned_ = progress_.finished();  // a finished group gets no report
    }

    GroupProgress progress() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return progress_;
    }

    /// Until finished (and its final progress report, if any, was delivered), or the deadline.
    bool wait_until(const std::chrono::steady_clock::time_point* deadline) const {
        std::unique_lock<std::mutex> lock(mutex_);
        auto done = [&] { return progress_.finished() && (!on_progress_ || final_returned_); };
        ++waiting_all_;
        const bool finished = deadline ? changed_.wait_until(lock, *deadline, done) : (changed_.wait(lock, done), true);
        --waiting_all_;
        return finished;
    }

    /// The next member index in completion order, waiting for one; nullopt once the
    /// group is finished and every completed index was returned.
    std::optional<std::size_t> next_completed() {
        std::unique_lock<std::mutex> lock(mutex_);
        ++waiting_next_;
        changed_.wait(lock, [&] { return consumed_ < completed_.size() || progress_.finished(); });
        --waiting_next_;
        if (consumed_ == completed_.size()) return std::nullopt;
        return completed_[consumed_++];
    }

private:
    /// Counts the members of `reports` (all of this group), reports progress
    /// (rate-limited; always once when the group finishes, and never after that
    /// report), wakes the waiters that may go on, and drops the members' references.
    void members_done(const Report* reports, std::size_t n) noexcept {
        bool report = false;
        bool wake = false;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (std::size_t i = 0; i < n; ++i) {
                (reports[i].outcome == Outcome::Value    ? progress_.done
                 : reports[i].outcome == Outcome::Failed ? progress_.failed
                                                         : progress_.cancelled)++;
                completed_.push_back(reports[i].index);  // room reserved in join(): cannot throw
            }
            if (on_progress_) {
                const auto now = std::chrono::steady_clock::now();
                if (progress_.finished() || now - last_report_ >= interval_) {
                    last_report_ = now;
                    report = true;
                }
            }
            // A wake-up is a system call when a thread waits: only for the ones whose
            // condition may now hold (next_completed: any completion; wait: the last).
            wake = waiting_next_ > 0 || (waiting_all_ > 0 && progress_.finished());
        }
        if (report) deliver_progress();
        if (wake) changed_.notify_all();
        if (refs_.fetch_sub(static_cast<int>(n), std::memory_order_acq_rel) == static_cast<int>(n)) delete this;
    }

    /// Progress callbacks run one at a time, each with a fresh snapshot; the one that
    /// sees the group finished is the last (until more members join).
    void deliver_progress() noexcept {
        std::lock_guard<std::mutex> report_lock(report_mutex_);
        GroupProgress snapshot;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (reported_final_) return;
            snapshot = progress_;
            if (snapshot.finished()) reported_final_ = true;
        }
        try {
            on_progress_(snapshot);
        } catch (...) {  // a progress display must not take the executor down; the error is dropped
        }
        if (snapshot.finished()) {
            {
                std::lock_guard<std::mutex> lock(mutex_);
                final_returned_ = true;
            }
            changed_.notify_all();
        }
    }

    std::atomic<int> refs_{1};
    std::atomic<bool> cancelled_{false};
    mutable std::mutex mutex_;  // the fields below
    mutable std::condition_variable changed_;
    mutable int waiting_all_ = 0;  // threads in wait_until
    int waiting_next_ = 0;         // threads in next_completed
    GroupProgress progress_;
    std::vector<std::size_t> completed_;  // member indices, completion order
    std::size_t consumed_ = 0;            // by next_completed
    std::function<void(const GroupProgress&)> on_progress_;
    std::chrono::steady_clock::duration interval_{};
    std::chrono::steady_clock::time_point last_report_{};
    bool reported_final_ = false;  // the finishing report was claimed...
    bool final_returned_ = false;  // ...and has returned
    std::mutex report_mutex_;  // one progress callback at a time (taken before mutex_)
};

}  // namespace detail

/// Items of any handlers tracked as one unit. Pass `&group` as ItemOptions::group when
/// queueing an item (or use InvokeHandler::map). A copyable handle: copies share the
/// group. Members join in queueing order (index 0, 1, ...), may be added at any time,
/// and report when their futures are fulfilled.
class Group {
public:
    Group() : state_(new detail::GroupState) {}
    Group(const Group& other) noexcept : state_(other.state_) { state_->add_ref(); }
    Group& operator=(const Group& other) noexcept {
        other.state_->add_ref();
        state_->release();
        state_ = other.state_;
        return *this;
    }
    ~Group() { state_->release(); }

    /// Counts of the members so far.
    GroupProgress progress() const { return state_->progress(); }

    /// Calls `callback(progress)` as members complete, at most once per `min_interval`,
    /// and always once when the group finishes; never after that call (until more
    /// members join). It runs on the thread that completed the member, without the GIL,
    /// one call at a time; it must be quick, and an exception from it is dropped.
    void on_progress(std::function<void(const GroupProgress&)> callback,
                     std::chrono::milliseconds min_interval = std::chrono::milliseconds(100)) {
        state_->set_on_progress(std::move(callback), min_interval);
    }

    /// Blocks until every member so far has completed (and the final progress call,
    /// if any, has returned). Do not call it with the GIL held.
    void wait() const { state_->wait_until(nullptr); }
    template <class Rep, class Period>
    bool wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
        const auto deadline =
            std::chrono::steady_clock::now() + std::chrono::ceil<std::chrono::steady_clock::duration>(timeout);
        return state_->wait_until(&deadline);
    }

    /// The index of the next member to complete, in completion order (as_completed);
    /// waits for one. nullopt once the group is finished and every index was returned.
    std::optional<std::size_t> next_completed() { return state_->next_completed(); }

    /// Members not yet handed to Python fail with Cancelled (checked when the commit
    /// thread takes them and when an executor takes them from the prefetch ring; a
    /// member waiting for inputs when it is queued); members already in Python finish.
    /// Other items of the same handlers are not affected. Members that join afterwards
    /// are cancelled too.
    void cancel() noexcept { state_->cancel(); }
    bool is_cancelled() const noexcept { return state_->cancelled(); }

    detail::GroupState* state() const noexcept { return state_; }

private:
    detail::GroupState* state_;
};

/// What InvokeHandler::map returns: the futures in input order, and the group they
/// belong to (progress, wait, completion order, cancel).
template <class R>
struct Mapped {
    Group group;
    std::vector<Future<R>> futures;
};

}  // namespace pyscheduler
