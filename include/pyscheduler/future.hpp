// pyscheduler/future.hpp - pyscheduler::Future<R>, the future that queue_invoke
// returns under LightweightFuturePolicy.
//
// Why it exists: fulfilling a std::promise costs a system call per item with
// libstdc++ (the shared state is made ready through std::call_once, and glibc's
// pthread_once ends its slow path, which every fresh promise takes, with an
// unconditional futex wake). At a million items a second that system call is the
// largest single cost of the pipeline. Future<R> makes its result ready, and lets go
// of the item's reference, with one atomic instruction, and enters the kernel only
// when a thread is actually waiting.
//
// It keeps std::future's contract for what it offers: get() once (then invalid),
// wait(), wait_for(), wait_until(), valid(), and std::future_error(no_state) on an
// invalid future. share() turns it into a SharedFuture<R>, copyable, whose get()
// returns a const reference, as std::shared_future's does.
//
// Both are what an item may take as an argument of another item (InvokeHandler::
// submit / queue_invoke): the state runs continuations (detail::Continuation) when
// it becomes ready, on the thread that made it ready, so a dependent item waits
// without a thread blocked on it.
#pragma once

#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <exception>
#include <future>
#include <new>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>

#include "pyscheduler/detail/block_pool.hpp"
#include "pyscheduler/detail/idle_budget.hpp"

#if defined(__linux__) && !defined(PYSCHEDULER_FUTURE_PORTABLE_WAIT)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#include <condition_variable>
#include <mutex>
#endif

namespace pyscheduler {

template <class R>
class Future;
template <class R>
class SharedFuture;

namespace detail {

/// `const R&`, or void for R = void: what SharedFuture<R>::get() returns.
template <class R>
using const_ref_t = std::conditional_t<std::is_void_v<R>, void, std::add_lvalue_reference_t<const R>>;

/// What the calling thread knows of its untimed waits for results not yet there
/// (FutureState::wait), whatever the types of the futures it waits on: when the last
/// one ended, and how long those that outlasted their first yields took.
struct ResultWaits {
    static constexpr int kPollLimitUs = 100;
    std::chrono::steady_clock::time_point last_end{};
    BasicIdleBudget<kPollLimitUs> budget;
};
inline ResultWaits& result_waits() noexcept {
    thread_local ResultWaits waits;
    return waits;
}

/// Work to run once a future state is ready: on the thread that makes it ready,
/// right after (the pipeline's threads do that without the GIL), or at once on the
/// thread that adds it, when the state is ready already. Intrusive: whoever adds the
/// node keeps it alive until `run` has been called, and `run` may free it.
struct Continuation {
    void (*run)(Continuation* self) noexcept = nullptr;
    Continuation* next = nullptr;
};

/// The shared state of one Future<R>, at the start of its item's heap block (the
/// pipeline's task node follows it).
///
/// Its readiness, its waiters and its references share one 64-bit word, so that an
/// item fulfils its future and lets go of the block with one locked instruction
/// (publish_and_release(); two of them, each waiting for the block's cache line, were
/// about a quarter of an executor's time at batch 256):
///   bit 0   kSet      the result is there
///   bit 1   kParked   a thread waits in the kernel, or is about to: the setter wakes it
///   bit 2   kWatched  continuations were added: the setter runs them
///   32-63   references: the item's (until it has published), one per Future or
///           SharedFuture, and one for each of kParked and kWatched. The thread that
///           sets one of those flags adds that reference for the setter, in the same
///           instruction: the setter still touches the block after it has published
///           (to wake, to run the continuations) and lets go of those references after.
/// Without a flag set (the common case) the setter's publish is its last access.
///
/// Threads park on the word's low half (the flags) with a futex (Linux), or elsewhere
/// (and with PYSCHEDULER_FUTURE_PORTABLE_WAIT defined, which the tests use to exercise
/// it) on a mutex + condition variable of the state's own. Not on a shared table of
/// them: two shared libraries that include this header each get their own copy of any
/// static, and a Future made in one may be waited on in the other.
template <class R>
class FutureState {
public:
    using Deadline = std::chrono::steady_clock::time_point;

    /// `tag`: how the block was allocated (to free it).
    explicit FutureState(BlockTag tag) noexcept : tag_(tag) {}
    FutureState(const FutureState&) = delete;
    FutureState& operator=(const FutureState&) = delete;

    /// The one Future of this state; takes its reference.
    Future<R> make_future() noexcept {
        add_ref();
        return Future<R>(this);
    }
    /// make_future() for a state no other thread can see yet (an item not queued
    /// yet): a plain store instead of a locked add, which on a freshly allocated
    /// block waits for its construction's stores.
    Future<R> make_first_future() noexcept {
        word_.store(2 * kRef, std::memory_order_relaxed);
        return Future<R>(this);
    }
    void add_ref() noexcept { word_.fetch_add(kRef, std::memory_order_relaxed); }

    /// Fulfils the state; the caller keeps its reference (and release()s it later).
    template <class... V>
    void set_value(V&&... v) noexcept {
        store_value(std::forward<V>(v)...);
        publish<false>();
    }
    void set_exception(std::exception_ptr e) noexcept {
        store_exception(std::move(e));
        publish<false>();
    }

    /// An item's way: the result is stored first (nobody sees it yet), the item's task
    /// ends, and publish_and_release() then makes the result visible and drops the
    /// item's reference at once. After it the block is no longer the caller's.
    template <class... V>
    void store_value(V&&... v) noexcept {
        try {
            if constexpr (!std::is_void_v<R>) value_.emplace(std::forward<V>(v)...);
        } catch (...) {  // R's constructor threw: the future gets that
            error_ = std::current_exception();
        }
    }
    void store_exception(std::exception_ptr e) noexcept { error_ = std::move(e); }
    void publish_and_release() noexcept { publish<true>(); }

    bool is_ready() const noexcept { return (word_.load(std::memory_order_acquire) & kSet) != 0; }

    /// Waits until the state is ready, or until `*deadline` when one is given. Returns
    /// is_ready(). An untimed wait on a thread whose last untimed wait for a result not
    /// yet there ended less than kRecent ago (it is going through results, or sending
    /// requests back to back) first yields the core up to kYields times, looking after
    /// each: a result that comes meanwhile costs its setter no wake-up, which on a VM
    /// costs microseconds of the setter's time (a system call, and an interrupt to wake
    /// the waiter's idle core). If the result is still not there, it keeps yielding for
    /// as long as its ResultWaits budget allows: up to twice the average of such longer
    /// waits, while that average is at most 100 us. A consumer going through a batch's
    /// futures thus waits out the gap to the next batch awake instead of parking once a
    /// batch (the executor's futex wake was some 6 % of its time at batch 256); one whose
    /// results come slower parks after the fixed yields. Any other wait parks at once:
    /// spinning first made a batch-1 round trip 2.5x slower on a 2-core machine (the
    /// waiter takes the core the pipeline's threads need), and yields before every park
    /// made requests 2 ms apart 3x slower.
    static constexpr int kYields = 10;
    static constexpr std::chrono::microseconds kRecent{50};
    bool wait(const Deadline* deadline) const noexcept {
        using clock = std::chrono::steady_clock;
        std::uint64_t w = word_.load(std::memory_order_acquire);
        if ((w & kSet) != 0) return true;
        if (deadline != nullptr) return wait_parked(w, deadline);
        ResultWaits& waits = result_waits();
        const auto begin = clock::now();
        bool longer = false;  // outlasted the fixed yields: the budget learns from it
        if (begin - waits.last_end < kRecent) {
            auto look = [&] {
                w = word_.load(std::memory_order_acquire);
                return (w & kSet) != 0;
            };
            bool set = false;
            yield_and_poll(look, set, kYields);
            longer = !set;
            yield_and_poll_until(look, set, begin + waits.budget.poll_for());
        }
        const bool ready = wait_parked(w, nullptr);
        waits.last_end = clock::now();
        if (longer) waits.budget.observe(waits.last_end - begin);
        return ready;
    }

    /// Runs `c` once the state is ready (see Continuation). Lock-free: the node is
    /// pushed onto a list, then kWatched is set (with its reference, by the first
    /// watcher) by an exchange that, when it succeeds, comes before the setter's
    /// publish, so the setter sees the flag and runs the list. A watcher that finds
    /// the state set runs the list itself. Each side takes the list with an exchange,
    /// so every node runs exactly once. The caller holds a reference.
    void on_ready(Continuation* c) noexcept {
        Continuation* head = continuations_.load(std::memory_order_relaxed);
        do {
            c->next = head;
        } while (!continuations_.compare_exchange_weak(head, c, std::memory_order_release, std::memory_order_relaxed));
        std::uint64_t w = word_.load(std::memory_order_acquire);
        for (;;) {
            if ((w & kSet) != 0) {
                run_continuations();
                return;
            }
            // Exchanged even when kWatched is set already: its success is what orders it.
            const std::uint64_t flagged = (w & kWatched) != 0 ? w : w + kWatched + kRef;
            if (word_.compare_exchange_weak(w, flagged, std::memory_order_acq_rel, std::memory_order_acquire)) return;
        }
    }

    /// After wait(): the value, or the stored exception rethrown.
    R take() {
        if (error_) std::rethrow_exception(error_);
        if constexpr (!std::is_void_v<R>) return std::move(*value_);
    }

    /// After wait(): the value, left in place (SharedFuture), or the exception rethrown.
    const_ref_t<R> peek() const {
        if (error_) std::rethrow_exception(error_);
        if constexpr (!std::is_void_v<R>) return *value_;
    }

    /// After wait(): the stored exception, or null.
    const std::exception_ptr& error() const noexcept { return error_; }

    void release() noexcept {
        // A count of 1 is ours alone: nobody else can add a reference, so the last
        // one skips the locked decrement (acquire: the other holders' releases).
        if (refs(word_.load(std::memory_order_acquire)) == 1 ||
            refs(word_.fetch_sub(kRef, std::memory_order_acq_rel)) == 1) {
            destroy();
        }
    }

private:
    static constexpr std::uint64_t kSet = 1;
    static constexpr std::uint64_t kParked = 2;
    static constexpr std::uint64_t kWatched = 4;
    static constexpr std::uint64_t kRef = std::uint64_t{1} << 32;
    static constexpr std::uint64_t refs(std::uint64_t word) noexcept { return word >> 32; }
    static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

    /// Sets kSet and, when `Release`, drops the setter's reference in the same
    /// instruction. Then, only when a flag was set, wakes the parked threads and runs
    /// the continuations, on the references their flags added, and drops those.
    template <bool Release>
    void publish() noexcept {
        const std::uint64_t old = word_.fetch_add(Release ? kSet - kRef : kSet, std::memory_order_acq_rel);
        const std::uint64_t flags = old & (kParked | kWatched);
        if (flags == 0) {
            if (Release && refs(old) == 1) destroy();  // no future is left to look
            return;
        }
        if ((flags & kParked) != 0) wake_all();
        if ((flags & kWatched) != 0) run_continuations();
        const std::uint64_t added = ((flags & kParked) != 0 ? kRef : 0) + ((flags & kWatched) != 0 ? kRef : 0);
        if constexpr (Release) {
            if (refs(word_.fetch_sub(added, std::memory_order_acq_rel)) == refs(added)) destroy();
        } else {  // the caller's reference keeps the block
            word_.fetch_sub(added, std::memory_order_release);
        }
    }

    void run_continuations() noexcept {
        Continuation* c = continuations_.exchange(nullptr, std::memory_order_acq_rel);
        while (c != nullptr) {
            Continuation* next = c->next;  // read first: run() may free the node
            c->run(c);
            c = next;
        }
    }

    /// wait()'s parking part; `w`: the word as last read.
    bool wait_parked(std::uint64_t w, const Deadline* deadline) const noexcept {
        while ((w & kSet) == 0) {
            if ((w & kParked) == 0) {  // the first parker adds the setter's reference for the wake-up
                if (!word_.compare_exchange_weak(w, w + kParked + kRef, std::memory_order_acquire)) continue;
                w += kParked + kRef;
            }
            if (!park(static_cast<std::uint32_t>(w), deadline)) return is_ready();
            w = word_.load(std::memory_order_acquire);
        }
        return true;
    }

    void destroy() noexcept {
        const BlockTag tag = tag_;
        this->~FutureState();
        free_block(this, tag);
    }

#if defined(__linux__) && !defined(PYSCHEDULER_FUTURE_PORTABLE_WAIT)
    /// The word's low half: the flags, which a futex compares.
    std::uint32_t* flags_address() const noexcept {
        static_assert(sizeof(word_) == 2 * sizeof(std::uint32_t));
        auto* halves = reinterpret_cast<std::uint32_t*>(const_cast<std::atomic<std::uint64_t>*>(&word_));
        return halves + (std::endian::native == std::endian::little ? 0 : 1);
    }
    /// Sleeps while the flags are `flags`. False once the deadline has passed.
    bool park(std::uint32_t flags, const Deadline* deadline) const noexcept {
        // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline (steady_clock's
        // clock in libstdc++ and libc++), so spurious wake-ups do not stretch the wait.
        timespec ts{};
        if (deadline) {
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline->time_since_epoch()).count();
            if (ns <= 0) return false;
            ts.tv_sec = static_cast<std::time_t>(ns / 1000000000);
            ts.tv_nsec = static_cast<long>(ns % 1000000000);
        }
        const long rc = ::syscall(SYS_futex, flags_address(), FUTEX_WAIT_BITSET_PRIVATE, flags,
                                  deadline ? &ts : nullptr, nullptr, FUTEX_BITSET_MATCH_ANY);
        return !(rc == -1 && errno == ETIMEDOUT);
    }
    void wake_all() const noexcept {
        ::syscall(SYS_futex, flags_address(), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
    }
#else
    // The setter changes the word before it takes the lock, and the parker reads it
    // under the lock: a wake-up cannot fall between the check and the wait.
    bool park(std::uint32_t, const Deadline* deadline) const noexcept {
        std::unique_lock<std::mutex> lock(mutex_);
        while (!is_ready()) {
            if (!deadline) {
                cv_.wait(lock);
            } else if (cv_.wait_until(lock, *deadline) == std::cv_status::timeout) {
                return false;
            }
        }
        return true;
    }
    void wake_all() const noexcept {
        { std::lock_guard<std::mutex> lock(mutex_); }
        cv_.notify_all();
    }
    mutable std::mutex mutex_;
    mutable std::condition_variable cv_;
#endif

    struct Empty {};
    using Value = std::conditional_t<std::is_void_v<R>, int, R>;  // std::optional<void> is ill-formed
    using Storage = std::conditional_t<std::is_void_v<R>, Empty, std::optional<Value>>;

    mutable std::atomic<std::uint64_t> word_{kRef};  // the item's reference; make_future() adds the Future's
    std::atomic<Continuation*> continuations_{nullptr};
    BlockTag tag_;
    std::exception_ptr error_;
    [[no_unique_address]] Storage value_;
};

/// What Future<R> and SharedFuture<R> have in common: one reference to the state,
/// and the waits. Not used on its own.
template <class R>
class FutureHandle {
    static_assert(!std::is_reference_v<R>, "pyscheduler::Future holds values, not references");

public:
    /// False for a default-constructed or moved-from future, and after Future::get().
    bool valid() const noexcept { return state_ != nullptr; }

    /// True once the result (value or exception) is there; never blocks.
    bool is_ready() const {
        check();
        return state_->is_ready();
    }

    /// Blocks until the result is there.
    void wait() const {
        check();
        state_->wait(nullptr);
    }

    template <class Rep, class Period>
    std::future_status wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
        check();
        if (timeout >= kForever) return wait_forever();  // now() + timeout could overflow
        return wait_until(std::chrono::steady_clock::now() +
                          std::chrono::ceil<std::chrono::steady_clock::duration>(timeout));
    }

    template <class Clock, class Duration>
    std::future_status wait_until(const std::chrono::time_point<Clock, Duration>& deadline) const {
        check();
        for (;;) {
            if (state_->is_ready()) return std::future_status::ready;
            const auto now = Clock::now();
            if (now >= deadline) return std::future_status::timeout;
            const auto left = deadline - now;
            if (left >= kForever) return wait_forever();
            // The wait's deadline is on steady_clock; another Clock is re-checked after each wait.
            const std::chrono::steady_clock::time_point steady =
                std::chrono::steady_clock::now() + std::chrono::ceil<std::chrono::steady_clock::duration>(left);
            state_->wait(&steady);
        }
    }

protected:
    FutureHandle() noexcept = default;
    explicit FutureHandle(FutureState<R>* state) noexcept : state_(state) {}
    FutureHandle(FutureHandle&& other) noexcept : state_(std::exchange(other.state_, nullptr)) {}
    FutureHandle(const FutureHandle& other) noexcept : state_(other.state_) {
        if (state_) state_->add_ref();
    }
    FutureHandle& operator=(FutureHandle&& other) noexcept {
        if (this != &other) {
            reset();
            state_ = std::exchange(other.state_, nullptr);
        }
        return *this;
    }
    FutureHandle& operator=(const FutureHandle& other) noexcept {
        if (this != &other) {
            if (other.state_) other.state_->add_ref();
            reset();
            state_ = other.state_;
        }
        return *this;
    }
    ~FutureHandle() { reset(); }

    void check() const {
        if (!state_) throw std::future_error(std::future_errc::no_state);
    }
    void reset() noexcept {
        if (state_) std::exchange(state_, nullptr)->release();
    }

    FutureState<R>* state_ = nullptr;

private:
    friend struct FutureAccess;

    /// Timeouts this long (a century) are waits without one.
    static constexpr std::chrono::hours kForever{24 * 365 * 100};
    std::future_status wait_forever() const {
        state_->wait(nullptr);
        return std::future_status::ready;
    }
};

/// The pipeline's view of a future's state (dependencies between items).
struct FutureAccess {
    template <class R>
    static FutureState<R>* state(const FutureHandle<R>& f) noexcept {
        return f.state_;
    }
};

}  // namespace detail

/// The result of one queued item under LightweightFuturePolicy, or of
/// InvokeHandler::submit: std::future's interface, without a system call to make it
/// ready unless a thread is already waiting. Move-only; destroying it before the item
/// completes is fine (the item still runs; its result is dropped). Moved into another
/// item's arguments, it makes that item wait for it (see InvokeHandler::submit).
template <class R>
class Future : public detail::FutureHandle<R> {
    using Base = detail::FutureHandle<R>;

public:
    Future() noexcept = default;
    Future(Future&&) noexcept = default;
    Future& operator=(Future&&) noexcept = default;
    Future(const Future&) = delete;
    Future& operator=(const Future&) = delete;

    /// Waits, then returns the value or throws the item's exception. The future is
    /// invalid afterwards (either way), as a std::future is.
    R get() {
        this->check();
        this->state_->wait(nullptr);
        struct Release {
            Future& f;
            ~Release() { f.reset(); }
        } release{*this};
        return this->state_->take();
    }

    /// A SharedFuture of the same result; this future becomes invalid. Throws
    /// std::future_error(no_state) on an invalid future, as std::future::share() does.
    SharedFuture<R> share() {
        this->check();
        return SharedFuture<R>(std::move(*this));
    }

private:
    friend class detail::FutureState<R>;
    explicit Future(detail::FutureState<R>* state) noexcept : Base(state) {}
};

/// A copyable view of one item's result (Future::share()): any number of copies, on
/// any threads, each may wait and get() (a const reference to the one value, or the
/// exception, rethrown each time). A copy passed as an argument of other items feeds
/// each of them the same value. The value lives as long as the last copy.
template <class R>
class SharedFuture : public detail::FutureHandle<R> {
    using Base = detail::FutureHandle<R>;

public:
    SharedFuture() noexcept = default;
    SharedFuture(Future<R>&& f) noexcept : Base(std::move(f)) {}  // NOLINT: as std::shared_future's
    SharedFuture(const SharedFuture&) noexcept = default;
    SharedFuture(SharedFuture&&) noexcept = default;
    SharedFuture& operator=(const SharedFuture&) noexcept = default;
    SharedFuture& operator=(SharedFuture&&) noexcept = default;

    /// Waits, then returns the value (a const reference; nothing for R = void) or
    /// throws the item's exception. The future stays valid.
    detail::const_ref_t<R> get() const {
        this->check();
        this->state_->wait(nullptr);
        return this->state_->peek();
    }
};

}  // namespace pyscheduler
