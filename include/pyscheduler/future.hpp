// pyscheduler/future.hpp - pyscheduler::Future<R>, the future that queue_invoke
// returns under LightweightFuturePolicy.
//
// Why it exists: fulfilling a std::promise costs a system call per item with
// libstdc++ (the shared state is made ready through std::call_once, and glibc's
// pthread_once ends its slow path, which every fresh promise takes, with an
// unconditional futex wake). At a million items a second that system call is the
// largest single cost of the pipeline. Future<R> makes its result ready with one
// atomic exchange and enters the kernel only when a thread is actually waiting.
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
#include <type_traits>
#include <utility>

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

/// An event that is set once. The word is 0 (pending), 1 (set) or 2 (pending, and a
/// thread is parked on it or about to park): set() makes a system call only in the
/// last case.
///
/// Threads park on a futex (Linux), or elsewhere (and with
/// PYSCHEDULER_FUTURE_PORTABLE_WAIT defined, which the tests use to exercise it) on a
/// mutex + condition variable of the event's own. Not on a shared table of them: two
/// shared libraries that include this header each get their own copy of any static,
/// and a Future made in one may be waited on in the other.
class OneShotEvent {
public:
    using Deadline = std::chrono::steady_clock::time_point;

    // seq_cst (the same instructions as acquire/release on x86 and ARMv8): the state's
    // continuation list relies on a store of each side being seen by the other side's
    // later load (FutureState::on_ready).
    bool is_set() const noexcept { return word_.load(std::memory_order_seq_cst) == kSet; }

    void set() noexcept {
        if (word_.exchange(kSet, std::memory_order_seq_cst) == kParked) wake_all();
    }

    /// Waits until the event is set, or until `*deadline` when one is given. Returns
    /// is_set(). Parks at once: spinning first made a batch-1 round trip 2.5x slower
    /// on a 2-core machine (the spinning waiter takes the core that the pipeline's
    /// threads need to produce the result), and did not raise throughput.
    bool wait(const Deadline* deadline) const noexcept {
        std::uint32_t w = word_.load(std::memory_order_acquire);
        while (w != kSet) {
            if (w == kPending && !word_.compare_exchange_weak(w, kParked, std::memory_order_acquire)) continue;
            if (!park(deadline)) return is_set();
            w = word_.load(std::memory_order_acquire);
        }
        return true;
    }

private:
    static constexpr std::uint32_t kPending = 0;
    static constexpr std::uint32_t kSet = 1;
    static constexpr std::uint32_t kParked = 2;

#if defined(__linux__) && !defined(PYSCHEDULER_FUTURE_PORTABLE_WAIT)
    std::uint32_t* address() const noexcept {
        static_assert(sizeof(word_) == sizeof(std::uint32_t));
        return reinterpret_cast<std::uint32_t*>(const_cast<std::atomic<std::uint32_t>*>(&word_));
    }
    /// Sleeps while the word is kParked. False once the deadline has passed.
    bool park(const Deadline* deadline) const noexcept {
        // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline (steady_clock's
        // clock in libstdc++ and libc++), so spurious wake-ups do not stretch the wait.
        timespec ts{};
        if (deadline) {
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline->time_since_epoch()).count();
            if (ns <= 0) return false;
            ts.tv_sec = static_cast<std::time_t>(ns / 1000000000);
            ts.tv_nsec = static_cast<long>(ns % 1000000000);
        }
        const long rc = ::syscall(SYS_futex, address(), FUTEX_WAIT_BITSET_PRIVATE, kParked, deadline ? &ts : nullptr,
                                  nullptr, FUTEX_BITSET_MATCH_ANY);
        return !(rc == -1 && errno == ETIMEDOUT);
    }
    void wake_all() noexcept { ::syscall(SYS_futex, address(), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0); }
#else
    // The setter changes the word before it takes the lock, and the parker reads it
    // under the lock: a wake-up cannot fall between the check and the wait. The
    // setter's reference to the shared state keeps the event alive through
    // wake_all(), even when the woken waiter lets go of the state at once.
    bool park(const Deadline* deadline) const noexcept {
        std::unique_lock<std::mutex> lock(mutex_);
        while (word_.load(std::memory_order_acquire) == kParked) {
            if (!deadline) {
                cv_.wait(lock);
            } else if (cv_.wait_until(lock, *deadline) == std::cv_status::timeout) {
                return false;
            }
        }
        return true;
    }
    void wake_all() noexcept {
        { std::lock_guard<std::mutex> lock(mutex_); }
        cv_.notify_all();
    }
    mutable std::mutex mutex_;
    mutable std::condition_variable cv_;
#endif

    mutable std::atomic<std::uint32_t> word_{kPending};
};

/// A queued item's heap block. Plain operator new already aligns to 16 bytes; the
/// aligned overload rounds the size up to the alignment, which costs a malloc size
/// class, so it serves over-aligned items only.
inline void* allocate_block(std::size_t size, std::size_t align) {
    return align <= __STDCPP_DEFAULT_NEW_ALIGNMENT__ ? ::operator new(size)
                                                     : ::operator new(size, std::align_val_t(align));
}
inline void free_block(void* p, std::size_t align) noexcept {
    if (align <= __STDCPP_DEFAULT_NEW_ALIGNMENT__) {
        ::operator delete(p);
    } else {
        ::operator delete(p, std::align_val_t(align));
    }
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
/// pipeline's task node follows it). References: the item's, dropped once it has
/// fulfilled the state, and one per Future or SharedFuture. The last one destroys
/// the state and frees the block.
template <class R>
class FutureState {
public:
    /// `block_align`: the alignment the block was allocated with (to free it).
    explicit FutureState(std::size_t block_align) noexcept : align_(block_align) {}
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
        refs_.store(2, std::memory_order_relaxed);
        return Future<R>(this);
    }
    void add_ref() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }

    template <class... V>
    void set_value(V&&... v) noexcept {
        try {
            if constexpr (!std::is_void_v<R>) value_.emplace(std::forward<V>(v)...);
        } catch (...) {  // R's constructor threw: the future gets that
            error_ = std::current_exception();
        }
        make_ready();
    }
    void set_exception(std::exception_ptr e) noexcept {
        error_ = std::move(e);
        make_ready();
    }

    bool is_ready() const noexcept { return ready_.is_set(); }
    bool wait(const OneShotEvent::Deadline* deadline) const noexcept { return ready_.wait(deadline); }

    /// Runs `c` once the state is ready (see Continuation). Lock-free: the node is
    /// pushed onto a list that the setter empties after it made the state ready; an
    /// adder that then finds the state ready empties the list itself. Both may try;
    /// each takes the list with an exchange, so every node runs exactly once.
    void on_ready(Continuation* c) noexcept {
        Continuation* head = continuations_.load(std::memory_order_relaxed);
        do {
            c->next = head;
        } while (!continuations_.compare_exchange_weak(head, c, std::memory_order_seq_cst, std::memory_order_relaxed));
        if (ready_.is_set()) run_continuations();
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
        if (refs_.load(std::memory_order_acquire) == 1 || refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            const std::size_t align = align_;
            this->~FutureState();
            free_block(this, align);
        }
    }

private:
    void make_ready() noexcept {
        ready_.set();
        // A plain load when nobody added a continuation (the common case); seq_cst
        // pairs with on_ready's push and its is_set(): one of the two sees the other.
        if (continuations_.load(std::memory_order_seq_cst) != nullptr) run_continuations();
    }
    void run_continuations() noexcept {
        Continuation* c = continuations_.exchange(nullptr, std::memory_order_acq_rel);
        while (c != nullptr) {
            Continuation* next = c->next;  // read first: run() may free the node
            c->run(c);
            c = next;
        }
    }

    struct Empty {};
    using Value = std::conditional_t<std::is_void_v<R>, int, R>;  // std::optional<void> is ill-formed
    using Storage = std::conditional_t<std::is_void_v<R>, Empty, std::optional<Value>>;

    std::atomic<std::uint32_t> refs_{1};  // the item's; make_future() adds the Future's
    OneShotEvent ready_;
    std::atomic<Continuation*> continuations_{nullptr};
    std::size_t align_;
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
