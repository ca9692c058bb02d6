// pyscheduler/handler.hpp - InvokeHandler: one Python function, called
// synchronously (invoke) or through the batching pipeline (queue_invoke).
//
// Obtain one from PyManager::loadPythonModule. Each handler owns a lock-free queue,
// a commit thread and a worker set of GIL-holding executor threads (one by default,
// HandlerOptions::workers; see detail/pipeline.hpp).
#pragma once

#include <pybind11/pybind11.h>

#include <bit>
#include <concepts>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "pyscheduler/detail/config.hpp"
#include "pyscheduler/detail/gil.hpp"
#include "pyscheduler/detail/interpreter.hpp"
#include "pyscheduler/detail/pipeline.hpp"
#include "pyscheduler/detail/task.hpp"
#include "pyscheduler/errors.hpp"
#include "pyscheduler/gil_safe.hpp"
#include "pyscheduler/group.hpp"
#include "pyscheduler/options.hpp"
#include "pyscheduler/policy.hpp"
#include "pyscheduler/stats.hpp"
#include "pyscheduler/stream.hpp"

namespace pyscheduler {

template <class Policy>
class PYSCHEDULER_HIDDEN BasicPyManager;

namespace detail {

/// The callback of the item that starts a stream: on the executor, with the GIL
/// held, hands the iterable to the stream and runs its first step.
template <class Policy>
struct PYSCHEDULER_HIDDEN StreamStarter {
    std::shared_ptr<StreamBase> core;
    Pipeline<Policy>* pipeline;
    void operator()(pybind11::object iterable) const noexcept {
        pipeline->after_step(core.get(), core->start(iterable, [p = pipeline] { return p->step_should_yield(); }));
    }
};

}  // namespace detail

/// What queue_invoke, try_queue_invoke and submit accept: a commit function callable
/// with the arguments (each input future replaced by its value), and a callback
/// callable with the Python result. (Void inputs pass, to be refused with a message.)
template <class Commit, class Callback, class... Args>
concept Queueable = (std::invocable<std::decay_t<Commit>&&, detail::passed_t<std::decay_t<Args>>...> ||
                     (detail::is_void_input_v<std::decay_t<Args>> || ...)) &&
                    std::invocable<std::decay_t<Callback>&&, pybind11::object>;

/// Waits for `future` (std::future, std::shared_future or pyscheduler::Future) with
/// the GIL released if this thread holds it, then returns get(). Callbacks run with
/// the GIL held: a callback that blocked on another handler's future with a plain
/// get() would keep that handler's executor from ever taking the GIL. Use this instead.
template <class F>
    requires requires(F& f) {
        f.wait();
        f.get();
    }
decltype(auto) wait_and_get(F&& future) {
    {
        detail::GilRelease unlocked;
        future.wait();
    }
    return future.get();
}

namespace detail {
/// Policy::future<R> when the policy names one, else std::future<R>.
template <class Policy, class R>
struct FutureOf {
    using type = std::future<R>;
};
template <class Policy, class R>
    requires requires { typename Policy::template future<R>; }
struct FutureOf<Policy, R> {
    using type = typename Policy::template future<R>;
};
}  // namespace detail

/// A Python function bound to its own pipeline. Move-only; moving keeps in-flight
/// work. The destructor drains: every queued item completes before it returns.
/// All member functions may be called from any number of threads at once (except
/// destruction and assignment, which must not race other calls on the same handler).
template <class Policy = DefaultPolicy>
class PYSCHEDULER_HIDDEN BasicInvokeHandler {
public:
    /// What queue_invoke returns for a callback result R: std::future<R> under
    /// DefaultPolicy, pyscheduler::Future<R> under LightweightFuturePolicy.
    template <class R>
    using future = typename detail::FutureOf<Policy, R>::type;

    /// The seed implementation's name for get_queue_stats()'s result.
    using QueueStats = pyscheduler::QueueStats;

    BasicInvokeHandler(BasicInvokeHandler&&) noexcept = default;
    BasicInvokeHandler& operator=(BasicInvokeHandler&&) noexcept = default;  // drains the old pipeline
    ~BasicInvokeHandler() = default;

    /// Calls the function on the calling thread with `args` converted by pybind11,
    /// and casts the result to R (R = void discards it). Takes the GIL for the call:
    /// the main one, or with own-GIL workers the GIL of one worker's interpreter, each
    /// worker's in turn (round robin over calls; it waits while that worker runs a
    /// batch). Process workers: the call goes to each worker's process in turn, and
    /// `args` and the result are pickled across. Throws PythonError if Python raises,
    /// WorkerLost or Timeout (call_timeout) from a process worker,
    /// pybind11::cast_error if the result does not convert to R.
    template <class R, class... Args>
    R invoke(Args&&... args) const {
        static_assert(!owns_python_references_v<R>,
                      "pyscheduler: invoke<R>: R holds Python objects, and the result leaves the call's GIL hold "
                      "for a caller that may not hold the GIL (copying or destroying it there corrupts reference "
                      "counts). Ask for a C++ type (invoke<double>, invoke<std::vector<long>>), or use "
                      "invoke(callback, args...) and convert in the callback, or return pyscheduler::GilSafe from it.");
        auto& p = pipeline();
        const auto& interpreter = p.interpreter_for_invoke();
        auto gil = interpreter.hold();
        try {
            pybind11::object result = interpreter.function()(std::forward<Args>(args)...);
            if constexpr (!std::is_void_v<R>) return result.template cast<R>();
        } catch (const pybind11::error_already_set& e) {
            std::rethrow_exception(detail::python_exception(e, p.name()));
        }
    }

    /// Calls the function on the calling thread and returns `callback(result)`,
    /// with the GIL held during the callback.
    template <class Callback, class... Args>
        requires std::invocable<Callback&&, pybind11::object>
    auto invoke(Callback&& callback, Args&&... args) const {
        static_assert(!owns_python_references_v<std::invoke_result_t<Callback&&, pybind11::object>>,
                      "pyscheduler: invoke(callback, ...): the callback returns a type that holds Python objects, "
                      "and it leaves the call's GIL hold for a caller that may not hold the GIL. Convert it in the "
                      "callback (return r.cast<double>();), or return pyscheduler::GilSafe<...>(r), whose copy and "
                      "destructor take the GIL.");
        auto& p = pipeline();
        const auto& interpreter = p.interpreter_for_invoke();
        auto gil = interpreter.hold();
        try {
            return std::invoke(std::forward<Callback>(callback),
                               interpreter.function()(std::forward<Args>(args)...));
        } catch (const pybind11::error_already_set& e) {
            std::rethrow_exception(detail::python_exception(e, p.name()));
        }
    }

    /// Queues one item and returns the future (`future<R>`, see above) of
    /// `callback(result)`.
    ///
    /// - `commit(args...)` runs on the handler's commit thread, ahead of execution.
    ///   If it returns a pybind11 object it runs with the GIL (one hold per bulk of
    ///   commits); otherwise it runs without the GIL, and its value is converted with
    ///   pybind11::cast inside the executor's GIL hold.
    /// - The Python function is called with a list of up to batch_size committed
    ///   values and must return a sequence of as many results.
    /// - `callback(result_i)` runs on the executor thread with the GIL held; its
    ///   return value (or exception) completes the future.
    ///
    /// Arguments that are futures of other items (a pyscheduler::Future<T>, moved in,
    /// or a SharedFuture<T>; of this handler or any other) are inputs: the item waits,
    /// costing no thread, until every input is ready, and the commit function receives
    /// their values (T, or const T& for a SharedFuture) in their places. An input that
    /// failed or was cancelled fails the item with DependencyFailed, without running it.
    ///
    /// Errors go to the futures: a commit or callback that throws fails its own item;
    /// a Python exception fails the batch's items with PythonError; a result of the
    /// wrong shape fails them with ResultError. With several own-GIL workers a commit
    /// function must return a C++ value (std::invalid_argument otherwise: the object
    /// would be made in one interpreter and used in another). An input that is not a
    /// valid future is std::invalid_argument.
    template <class Commit, class Callback, class... Args,
              class R = std::invoke_result_t<std::decay_t<Callback>&&, pybind11::object>>
        requires Queueable<Commit, Callback, Args...>
    future<R> queue_invoke(Commit&& commit, Callback&& callback, Args&&... args) {
        return *queue<future<R>>(ItemOptions{}, true, std::forward<Commit>(commit), std::forward<Callback>(callback),
                                 std::forward<Args>(args)...);
    }

    /// As above, with per-item options (priority, deadline, group).
    template <class Commit, class Callback, class... Args,
              class R = std::invoke_result_t<std::decay_t<Callback>&&, pybind11::object>>
        requires Queueable<Commit, Callback, Args...>
    future<R> queue_invoke(const ItemOptions& item, Commit&& commit, Callback&& callback, Args&&... args) {
        return *queue<future<R>>(item, true, std::forward<Commit>(commit), std::forward<Callback>(callback),
                                 std::forward<Args>(args)...);
    }

    /// As queue_invoke, but never blocks: when a bounded queue (queue_capacity > 0) is
    /// full, returns an empty optional and leaves the arguments untouched.
    template <class Commit, class Callback, class... Args,
              class R = std::invoke_result_t<std::decay_t<Callback>&&, pybind11::object>>
        requires Queueable<Commit, Callback, Args...>
    std::optional<future<R>> try_queue_invoke(Commit&& commit, Callback&& callback, Args&&... args) {
        return queue<future<R>>(ItemOptions{}, false, std::forward<Commit>(commit), std::forward<Callback>(callback),
                                std::forward<Args>(args)...);
    }

    /// As above, with per-item options.
    template <class Commit, class Callback, class... Args,
              class R = std::invoke_result_t<std::decay_t<Callback>&&, pybind11::object>>
        requires Queueable<Commit, Callback, Args...>
    std::optional<future<R>> try_queue_invoke(const ItemOptions& item, Commit&& commit, Callback&& callback,
                                              Args&&... args) {
        return queue<future<R>>(item, false, std::forward<Commit>(commit), std::forward<Callback>(callback),
                                std::forward<Args>(args)...);
    }

    /// As queue_invoke, but returns a pyscheduler::Future<R> whatever the policy: the
    /// future that can be an input of other items (moved in, or share()d to feed
    /// several). Under LightweightFuturePolicy the same as queue_invoke.
    template <class Commit, class Callback, class... Args,
              class R = std::invoke_result_t<std::decay_t<Callback>&&, pybind11::object>>
        requires Queueable<Commit, Callback, Args...>
    Future<R> submit(Commit&& commit, Callback&& callback, Args&&... args) {
        return *queue<Future<R>>(ItemOptions{}, true, std::forward<Commit>(commit), std::forward<Callback>(callback),
                                 std::forward<Args>(args)...);
    }

    /// As above, with per-item options.
    template <class Commit, class Callback, class... Args,
              class R = std::invoke_result_t<std::decay_t<Callback>&&, pybind11::object>>
        requires Queueable<Commit, Callback, Args...>
    Future<R> submit(const ItemOptions& item, Commit&& commit, Callback&& callback, Args&&... args) {
        return *queue<Future<R>>(item, true, std::forward<Commit>(commit), std::forward<Callback>(callback),
                                 std::forward<Args>(args)...);
    }

    /// Queues one item whose Python result is an iterable (a generator, typically),
    /// and returns its elements as a Stream<R>, each converted with pybind11::cast<R>
    /// on the executor, as the generator produces them. The item is queued like any
    /// other (commit function, inputs, options.item's priority, deadline and group);
    /// the function, called with the batch, returns one iterable per item, and the
    /// stream's first elements are produced at once. From then on the executor
    /// advances the generator in steps that take turns with other items and streams,
    /// never more than options.buffer elements ahead of the reader (see stream.hpp).
    ///
    /// Shutdown waits for open streams: Drain until each is read to its end or closed,
    /// Cancel ends each with Cancelled (closing its generator). So close() or drop a
    /// stream you stop reading before draining its handler. std::invalid_argument
    /// for a buffer of 0, on a handler with several own-GIL workers (a generator
    /// cannot move between interpreters) and on process workers.
    template <class R, class Commit, class... Args>
        requires Queueable<Commit, detail::StreamStarter<Policy>, Args...>
    Stream<R> stream(const StreamOptions& options, Commit&& commit, Args&&... args) {
        auto& p = pipeline();
        if (options.buffer == 0) throw std::invalid_argument("pyscheduler: StreamOptions::buffer must be at least 1");
        if (p.refuses_streams()) {
            const bool process = p.options().interpreter == InterpreterKind::Process;
            throw std::invalid_argument(
                "pyscheduler: " + p.name() +
                (process ? " runs in worker processes, and a generator cannot leave its process (streams need "
                           "InterpreterKind::Main, or OwnGil with workers = 1)"
                         : " has " + std::to_string(p.options().workers) +
                               " own-GIL workers, each in its own interpreter: streams need one interpreter "
                               "(workers = 1, or InterpreterKind::Main)"));
        }
        auto core = std::make_shared<detail::StreamCore<R>>(options.buffer, p.name());
        p.open_stream(core);
        Future<void> started;
        try {
            started = *queue<Future<void>>(options.item, true, std::forward<Commit>(commit),
                                           detail::StreamStarter<Policy>{core, &p}, std::forward<Args>(args)...);
        } catch (...) {
            core->end_unstarted(std::current_exception());
            p.stream_ended(core.get());
            throw;
        }
        detail::FutureState<void>* state = detail::FutureAccess::state(started);
        state->on_ready(new detail::StreamStartWatch(core, &p, state));
        return Stream<R>(std::move(core));
    }

    /// As above, with the default StreamOptions.
    template <class R, class Commit, class... Args>
        requires Queueable<Commit, detail::StreamStarter<Policy>, Args...>
    Stream<R> stream(Commit&& commit, Args&&... args) {
        return stream<R>(StreamOptions{}, std::forward<Commit>(commit), std::forward<Args>(args)...);
    }

    /// Stops the handler's threads. Drain runs everything queued (what the destructor
    /// does); Cancel fails every item not yet handed to Python with Cancelled, lets a
    /// batch already in Python finish, and returns promptly. Idempotent, and safe while
    /// other threads still call queue_invoke: items queued afterwards get a future
    /// that fails with Cancelled. Synchronous invoke keeps working. Throws
    /// std::logic_error when called from the handler's own commit function or callback.
    void shutdown(ShutdownMode mode = ShutdownMode::Drain) { pipeline().shutdown(mode); }

    /// Queues one item per element of `inputs` (each element the item's one argument,
    /// passed to a copy of `commit`; SharedFuture elements are inputs), all in one
    /// new Group: the futures in input order, and the group for progress, waiting,
    /// completion order and cancel. `item` applies to every item (its group is
    /// replaced). The members join the group at once, so it finishes only with the last.
    template <std::ranges::forward_range Range, class Commit, class Callback,
              class R = std::invoke_result_t<std::decay_t<Callback>&&, pybind11::object>>
        requires Queueable<Commit&, Callback&, std::ranges::range_reference_t<const Range&>>
    Mapped<R> map(const Range& inputs, Commit&& commit, Callback&& callback, ItemOptions item = {}) {
        Mapped<R> m;
        item.group = nullptr;
        const auto n = static_cast<std::size_t>(std::ranges::distance(inputs));
        m.futures.reserve(n);
        detail::GroupState* const state = m.group.state();
        const std::uint32_t first = state->join(n);
        Member member;
        try {
            for (const auto& x : inputs) {
                member = {state, first + static_cast<std::uint32_t>(m.futures.size())};
                m.futures.push_back(*queue<Future<R>>(item, member, true, commit, callback, x));
            }
        } catch (...) {
            // The members never queued leave; one whose item was built completes (and reports) itself.
            state->unjoin(n - m.futures.size() - (member.state ? 0 : 1));
            throw;
        }
        return m;
    }

    /// Stops new batches from starting: a batch already in Python finishes, committed
    /// items wait in the prefetch ring (or with the executor that took them), producers
    /// keep queueing (a bounded queue still pushes back), and the executors park (no
    /// CPU). resume() picks up without losing or re-running anything. Synchronous
    /// invoke is not affected. shutdown() resumes a paused handler (Drain runs what is
    /// queued, Cancel fails it). Idempotent; any thread.
    void pause() { pipeline().pause(); }
    void resume() { pipeline().resume(); }
    bool is_paused() const { return pipeline().paused(); }

    /// True once shutdown() has begun: new items are refused (their futures fail with
    /// Cancelled).
    bool is_shut_down() const { return pipeline().stopped(); }

    /// A snapshot of the pipeline's counters and moving averages.
    QueueStats get_queue_stats() const { return pipeline().stats(); }

    /// "module.function".
    const std::string& name() const { return pipeline().name(); }

    /// The options the handler was created with.
    const HandlerOptions& options() const { return pipeline().options(); }

private:
    friend class BasicPyManager<Policy>;
    using Pipeline = detail::Pipeline<Policy>;

    explicit BasicInvokeHandler(std::unique_ptr<Pipeline> p) noexcept : pipeline_(std::move(p)) {}

    /// Refuses a commit function that returns a Python object where the handler has
    /// several own-GIL workers (see queue_invoke), and inputs that are not valid futures.
    template <class Commit, class... Args>
    static void check_arguments(const Pipeline& p, const Args&... args) {
        using Committed = std::invoke_result_t<Commit&&, detail::passed_t<std::decay_t<Args>>...>;
        if constexpr (detail::is_python_object_v<Committed>) {
            if (p.refuses_python_commits()) {
                throw std::invalid_argument(
                    "pyscheduler: " + p.name() + " has " + std::to_string(p.options().workers) +
                    " own-GIL workers, each in its own interpreter: its commit functions must return C++ values, "
                    "not Python objects (return the C++ value and let the pipeline convert it, or build the "
                    "object in the Python function)");
            }
        }
        if constexpr (detail::input_count_v<Args...> > 0) {
            std::size_t position = 0;
            auto check = [&](const auto& a) {
                if constexpr (detail::is_input_v<std::decay_t<decltype(a)>>) {
                    if (!a.valid()) {
                        throw std::invalid_argument("pyscheduler: " + p.name() + ": argument " +
                                                    std::to_string(position) +
                                                    " is a future without a state (default-constructed, moved from, "
                                                    "or already read with get())");
                    }
                }
                ++position;
            };
            (check(args), ...);
        }
    }

    /// Checks, reserves a queue slot (waiting for one when `wait`), builds the item
    /// and queues it, or makes it wait for its inputs. Empty only when not `wait` and
    /// the bounded queue is full.
    template <class F, class Commit, class Callback, class... Args>
    std::optional<F> queue(const ItemOptions& item, bool wait, Commit&& commit, Callback&& callback,
                           Args&&... args) {
        Member none;
        return queue<F>(item, none, wait, std::forward<Commit>(commit), std::forward<Callback>(callback),
                        std::forward<Args>(args)...);
    }

    /// A group membership taken before the item is built (map joins all its items at
    /// once); empty: the item joins ItemOptions::group, if any, itself.
    struct Member {
        detail::GroupState* state = nullptr;
        std::uint32_t index = 0;
    };

    /// `member` is emptied once an item owns it (it then reports to the group whatever happens).
    template <class F, class Commit, class Callback, class... Args>
    std::optional<F> queue(const ItemOptions& item, Member& member, bool wait, Commit&& commit, Callback&& callback,
                           Args&&... args) {
        (detail::check_input<std::decay_t<Args>>(), ...);
        static_assert(((!detail::is_future_v<std::decay_t<Args>> || !std::is_lvalue_reference_v<Args>) && ...),
                      "pyscheduler: a pyscheduler::Future argument is moved into the item: pass std::move(f), or "
                      "f.share() to use the result for several items");
        auto& p = pipeline();
        check_arguments<std::decay_t<Commit>, std::decay_t<Args>...>(p, args...);
        if (!p.reserve_slot(wait)) return std::nullopt;
        if (item.priority != 0) p.note_priority();
        return enqueue<F>(p, item, member, std::forward<Commit>(commit), std::forward<Callback>(callback),
                          std::forward<Args>(args)...);
    }

    /// Builds the item (its queue slot already reserved) and queues it.
    template <class F, class Commit, class Callback, class... Args>
    F enqueue(Pipeline& p, const ItemOptions& options, Member& member, Commit&& commit, Callback&& callback,
              Args&&... args) {
        using R = typename detail::Completion<F>::value_type;
        static_assert(!owns_python_references_v<R>,
                      "pyscheduler: queue_invoke: the callback returns a type that holds Python objects "
                      "(pybind11::object, a container of them...). The future hands it to a thread that does not "
                      "hold the GIL, where copying or destroying it corrupts reference counts. Convert it in the "
                      "callback (return r.cast<double>();), or return pyscheduler::GilSafe<...>(r), whose copy and "
                      "destructor take the GIL.");
        static_assert(detail::is_supported_future_v<F>,
                      "pyscheduler: Policy::future<R> must be std::future<R> or pyscheduler::Future<R>");
        using TaskT = detail::Task<F, std::decay_t<Commit>, std::decay_t<Callback>, std::decay_t<Args>...>;
        const bool in_group = member.state || options.group;
        const bool with_extras =
            in_group || options.deadline != std::chrono::steady_clock::time_point::max() || p.stamps_items();
        std::pair<TaskT*, F> item;
        try {
            item = detail::make_task<F, std::decay_t<Commit>, std::decay_t<Callback>, std::decay_t<Args>...>(
                with_extras, std::forward<Commit>(commit), std::forward<Callback>(callback),
                std::forward<Args>(args)...);
        } catch (...) {
            p.unreserve_slot();
            throw;
        }
        TaskT* task = item.first;
        task->priority = options.priority;
        if (with_extras) task->extras->deadline = options.deadline;
        if (in_group) {
            if (!member.state) {
                try {
                    member = {options.group->state(), options.group->state()->join()};
                } catch (...) {  // out of memory: the item was not queued
                    p.complete_unqueued(task, std::current_exception());
                    throw;
                }
            }
            task->extras->group = std::exchange(member.state, nullptr);
            task->extras->group_index = member.index;
        }
        bool queued = false;
        std::exception_ptr error;
        try {
            if constexpr (TaskT::kInputs > 0) {
                if (const std::uint64_t pending = task->pending_inputs()) {
                    return wait_for_inputs(p, task, pending, std::move(item.second));
                }
            }
            queued = p.submit(task);
        } catch (...) {
            error = std::current_exception();
        }
        if (!queued) {  // completes here, so that nothing is lost
            p.complete_unqueued(task, error ? error : p.refused());
            if (error) std::rethrow_exception(error);
        }
        return std::move(item.second);
    }

    /// Lists the item as waiting and puts a Link on each input in `pending`; the last
    /// input to arrive queues it. Throws only before anything was linked.
    template <class F, class TaskT>
    F wait_for_inputs(Pipeline& p, TaskT* task, std::uint64_t pending, F future) {
        auto w = std::make_unique<detail::Waiting>(task, std::popcount(pending), &p.waiting());
        if (!p.waiting().add(w.get())) {
            p.complete_unqueued(task, p.refused());
            return future;
        }
        detail::Waiting* const listed = w.release();  // from here on owned by its references
        task->wait_for_inputs(pending, *listed);
        listed->registered();  // from here on the item may run, complete and be freed
        return future;
    }

    Pipeline& pipeline() const {
        if (!pipeline_) throw std::logic_error("pyscheduler: InvokeHandler used after it was moved from");
        return *pipeline_;
    }

    std::unique_ptr<Pipeline> pipeline_;
};

}  // namespace pyscheduler
