// pyscheduler/detail/dependency.hpp - items that take other items' futures as
// arguments, and wait for them without a thread.
//
// A Future<T> or SharedFuture<T> among an item's arguments is an input. The item
// is built at once (its queue slot reserved), but it is queued only when every input
// is ready: each input not yet ready gets a Continuation (a Link of the item's
// Waiting record), and the last one to run queues the item from the thread that
// completed that input. The commit function then receives the inputs' values; an
// input that failed makes the item fail with DependencyFailed instead (Task::commit).
//
// The handler's WaitRegistry lists its waiting items, so that shutdown can either
// wait until they are queued (Drain) or take them and fail them (Cancel) without
// waiting for their inputs. Whichever side takes the item first (the last input, or
// Cancel) owns it: `Waiting::task` is exchanged to null once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "pyscheduler/detail/config.hpp"
#include "pyscheduler/future.hpp"
#include "pyscheduler/gil_safe.hpp"

namespace pyscheduler::detail {

class TaskBase;
class WaitRegistry;

// --- which arguments are inputs ----------------------------------------------

/// An argument type that is an input (a future of another item), and what the
/// commit function receives for it: T for a Future<T> (moved out), const T& for a
/// SharedFuture<T>. Any other argument is passed on as an rvalue.
template <class A>
struct InputTraits {
    static constexpr bool is_input = false;
    using passed = A&&;
};
template <class T>
struct InputTraits<Future<T>> {
    static constexpr bool is_input = true;
    using value_type = T;
    using passed = T;
};
template <class T>
struct InputTraits<SharedFuture<T>> {
    static constexpr bool is_input = true;
    using value_type = T;
    using passed = const T&;
};

template <class A>
inline constexpr bool is_input_v = InputTraits<A>::is_input;

/// A Future<void> or SharedFuture<void> among the arguments: refused (check_input)
/// with a message, rather than by overload resolution without one.
template <class A>
inline constexpr bool is_void_input_v = false;
template <class A>
    requires InputTraits<A>::is_input
inline constexpr bool is_void_input_v<A> = std::is_void_v<typename InputTraits<A>::value_type>;

template <class A>
inline constexpr bool is_future_v = false;  // a (move-only) Future, as opposed to a SharedFuture
template <class T>
inline constexpr bool is_future_v<Future<T>> = true;

/// What the commit function is called with for an argument of (decayed) type A.
template <class A>
using passed_t = typename InputTraits<A>::passed;

template <class... A>
inline constexpr std::size_t input_count_v = (std::size_t{0} + ... + (is_input_v<A> ? 1 : 0));

template <class T>
inline constexpr bool is_gil_safe_v = false;
template <class T>
inline constexpr bool is_gil_safe_v<GilSafe<T>> = true;

template <class A>
constexpr void check_input() {
    if constexpr (is_input_v<A>) {
        using T = typename InputTraits<A>::value_type;
        static_assert(!std::is_void_v<T>,
                      "pyscheduler: a Future<void> or SharedFuture<void> has no value to pass to the commit "
                      "function; return a value (a bool, an int) from the input's callback");
        static_assert(!owns_python_references_v<T> && !is_gil_safe_v<T>,
                      "pyscheduler: an input's value holds Python objects; values that go from one item to "
                      "another are C++ values (they may cross handlers and interpreters)");
    }
}

/// The argument as the commit function receives it (after every input is ready):
/// Future<T>::get() moves T out, SharedFuture<T>::get() gives const T&, anything else
/// is passed as an rvalue.
template <class A>
decltype(auto) pass_argument(A& a) {
    if constexpr (is_input_v<A>) {
        return a.get();
    } else {
        return std::move(a);
    }
}

/// "what()" of a stored exception, for DependencyFailed's message.
inline std::string describe(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return x.what();
    } catch (...) {
        return "an exception not derived from std::exception";
    }
}

// --- a waiting item ----------------------------------------------------------

/// One item whose inputs are not all ready. Freed when every Link has run and the
/// registry has let go of it.
class Waiting {
public:
    struct Link {
        Continuation node;
        Waiting* owner = nullptr;
    };

    /// `pending`: inputs not ready when the item was queued (one Link each). The
    /// thread that registers the Links holds one more count and reference until it
    /// calls registered(), so that the item cannot be queued (and freed) while Links
    /// are still being added to its inputs.
    Waiting(TaskBase* task, int pending, WaitRegistry* registry)
        : links_(static_cast<std::size_t>(pending)),
          remaining_(pending + 1),
          refs_(pending + 2),
          task_(task),
          registry_(registry) {
        for (auto& l : links_) {
            l.node.run = &Waiting::input_ready;
            l.owner = this;
        }
    }

    Continuation* link(std::size_t i) noexcept { return &links_[i].node; }

    /// Every Link is on its input: lets go of the registering thread's count (queuing
    /// the item if every input is in already) and reference. If a Cancel shutdown began
    /// meanwhile, it left this item alone (its arguments were still being read), so the
    /// item is failed here.
    void registered() noexcept;

    /// Takes the item: non-null for the one caller that got it.
    TaskBase* claim() noexcept { return task_.exchange(nullptr, std::memory_order_acq_rel); }

    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }

private:
    friend class WaitRegistry;
    static void input_ready(Continuation* c) noexcept;

    std::vector<Link> links_;
    Link registering_{{}, this};  // stands for the registering thread
    std::atomic<int> remaining_;  // inputs not ready yet
    std::atomic<int> refs_;       // Links not run yet, and the registry's
    std::atomic<TaskBase*> task_;
    WaitRegistry* const registry_;
    Waiting* prev_ = nullptr;  // registry list, under its mutex
    Waiting* next_ = nullptr;
    bool linking_ = true;  // under the registry's mutex: Links are still being added
};

/// A handler's waiting items. Not copyable; lives in the pipeline.
class WaitRegistry {
public:
    /// `queue(context, task)` queues an item whose inputs are all in, even while the
    /// handler is draining (the registry is emptied before the shutdown sentinel);
    /// `cancel(context, task)` fails and completes an item that Cancel took.
    using TaskFn = void (*)(void* context, TaskBase* task) noexcept;

    WaitRegistry(TaskFn queue, TaskFn cancel, void* context) noexcept
        : queue_(queue), cancel_(cancel), context_(context) {}
    WaitRegistry(const WaitRegistry&) = delete;
    WaitRegistry& operator=(const WaitRegistry&) = delete;

    /// Lists `w`; false once the registry is closed (the handler is shutting down).
    bool add(Waiting* w) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (closed_) return false;
        w->next_ = head_;
        if (head_) head_->prev_ = w;
        head_ = w;
        ++count_;
        unclaimed_.fetch_add(1, std::memory_order_relaxed);
        return true;
    }

    /// Items still waiting: taken out of the count when claimed, before they are
    /// queued (or failed), so whoever has seen such an item complete sees it gone
    /// here. The list keeps the item a moment longer (see inputs_ready).
    std::size_t size() const { return unclaimed_.load(std::memory_order_acquire); }

    /// Shutdown, Drain: refuses new items and returns once every listed item has
    /// been queued (its inputs may come from other handlers, so this waits for them).
    void close_and_wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        closed_ = true;
        emptied_.wait(lock, [&] { return count_ == 0; });
    }

    /// Shutdown, Cancel: refuses new items, takes every listed item that no input has
    /// taken yet, waits until the others are queued or failed, and returns the taken
    /// ones (for the caller to fail). Their Links stay on their inputs and run,
    /// harmlessly, later. An item whose Links are still being added is left to its
    /// registering thread, which fails it when done (Waiting::registered).
    std::vector<TaskBase*> close_and_take() {
        std::vector<TaskBase*> taken;
        std::unique_lock<std::mutex> lock(mutex_);
        closed_ = true;
        cancelling_ = true;
        for (Waiting* w = head_; w != nullptr;) {
            Waiting* next = w->next_;
            if (w->linking_) {
                w = next;
                continue;
            }
            if (TaskBase* t = w->claim()) {
                unclaimed_.fetch_sub(1, std::memory_order_release);
                taken.push_back(t);
                unlink(w);
                w->release();  // the registry's reference
            }
            w = next;
        }
        emptied_.wait(lock, [&] { return count_ == 0; });
        return taken;
    }

private:
    friend class Waiting;

    /// The last input of `w` is in: queue its item, unless Cancel took it.
    void inputs_ready(Waiting* w) noexcept {
        TaskBase* t = w->claim();
        if (!t) return;
        unclaimed_.fetch_sub(1, std::memory_order_release);
        queue_(context_, t);  // before it leaves the list: a draining shutdown waits for it
        {
            std::lock_guard<std::mutex> lock(mutex_);
            unlink(w);
            if (count_ == 0) emptied_.notify_all();  // under the lock: the registry may go right after
        }
        w->release();  // the registry's reference
    }

    /// Waiting::registered(): the item's Links are all added. Under Cancel, the item is
    /// failed now (the shutdown that skipped it waits for this).
    void registration_done(Waiting* w) noexcept {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            w->linking_ = false;
            if (!cancelling_) return;
        }
        TaskBase* t = w->claim();
        if (!t) return;
        unclaimed_.fetch_sub(1, std::memory_order_release);
        cancel_(context_, t);  // before it leaves the list: the shutdown waits for it
        {
            std::lock_guard<std::mutex> lock(mutex_);
            unlink(w);
            if (count_ == 0) emptied_.notify_all();
        }
        w->release();  // the registry's reference
    }

    void unlink(Waiting* w) noexcept {  // mutex held
        if (w->prev_) {
            w->prev_->next_ = w->next_;
        } else {
            head_ = w->next_;
        }
        if (w->next_) w->next_->prev_ = w->prev_;
        w->prev_ = w->next_ = nullptr;
        --count_;
    }

    const TaskFn queue_;
    const TaskFn cancel_;
    void* const context_;
    mutable std::mutex mutex_;
    std::condition_variable emptied_;
    Waiting* head_ = nullptr;
    std::size_t count_ = 0;                  // listed (mutex_)
    std::atomic<std::size_t> unclaimed_{0};  // listed and not claimed yet: size()
    bool closed_ = false;
    bool cancelling_ = false;  // closed by a Cancel shutdown
};

inline void Waiting::registered() noexcept {
    registry_->registration_done(this);
    input_ready(&registering_.node);
}

inline void Waiting::input_ready(Continuation* c) noexcept {
    Waiting* w = reinterpret_cast<Link*>(c)->owner;  // node is Link's first member
    if (w->remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) w->registry_->inputs_ready(w);
    w->release();  // this Link's reference
}

}  // namespace pyscheduler::detail
