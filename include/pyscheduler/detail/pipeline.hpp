// pyscheduler/detail/pipeline.hpp - the threads behind one InvokeHandler.
//
//   producers --queue_invoke--> [MPMC queue] --> commit thread --> [prefetch ring]
//             --> worker set: N executor threads (GIL only while they have a batch)
//             --> promises
//
// Synchronisation: the MPMC queue is moodycamel's ConcurrentQueue (lock-free). The
// commit thread parks on a semaphore of its own, which producers signal only when it
// is parked (an eventcount made of the item count `enqueued_` and the flag
// `commit_parked_`; see park_for_work() in commit_loop), so queueing an item takes
// one locked instruction. The prefetch ring is an array with one producer (the
// commit thread) whose hand-offs are ordered by two semaphores: `room_` (free slots,
// released by the executors, acquired by the commit thread) and `ready_` (committed
// items, the other way round). An executor first takes a count from `ready_`, then
// pops that many items; with several workers the pops happen under `take_mutex_`, so
// slots are read in ring order and a slot is given back (room_) only after every
// slot before it was read. Every wait polls briefly, yielding the core between
// polls, and then parks in the kernel (idle_wait), so an idle handler costs no CPU.
//
// Ordering: with HandlerOptions::order Fifo and no item of nonzero priority, the
// commit thread commits in dequeue order. Otherwise it keeps the items it dequeued
// in a heap (priority, then arrival order or its reverse) and, each time the ring
// has room, first dequeues whatever else has arrived, then commits the best ones.
//
// Dependencies (dependency.hpp): an item with inputs not yet ready waits in the
// WaitRegistry, outside the queue; the thread that completes its last input queues it.
//
// Shutdown: waiting items are queued as their inputs arrive (Drain) or taken out and
// failed with Cancelled (Cancel) first. Then a null sentinel goes into the MPMC
// queue. The commit thread keeps dequeuing until it has taken every item counted
// before shutdown began (a producer's item may sit behind the sentinel; submit()
// says why), then pushes the sentinel into the ring. An executor that reaches it
// leaves it in place and gives its count back to `ready_`, so every worker finds it
// after everything ahead of it. Every item therefore completes.
#pragma once

#include <concurrentqueue/concurrentqueue.h>
#include <concurrentqueue/lightweightsemaphore.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pyscheduler/detail/config.hpp"
#include "pyscheduler/detail/dependency.hpp"
#include "pyscheduler/detail/gil.hpp"
#include "pyscheduler/detail/idle_budget.hpp"
#include "pyscheduler/detail/interpreter.hpp"
#include "pyscheduler/detail/process.hpp"
#include "pyscheduler/detail/subinterpreter.hpp"
#include "pyscheduler/stream.hpp"
#include "pyscheduler/detail/task.hpp"
#include "pyscheduler/errors.hpp"
#include "pyscheduler/options.hpp"
#include "pyscheduler/policy.hpp"
#include "pyscheduler/stats.hpp"

namespace pyscheduler::detail {

/// Policy::idle_yields, or DefaultPolicy's for a policy written before it existed.
template <class Policy>
constexpr int idle_yields_of() {
    if constexpr (requires { Policy::idle_yields; }) {
        return Policy::idle_yields;
    } else {
        return DefaultPolicy::idle_yields;
    }
}

/// Policy::idle_adaptive_us, or DefaultPolicy's for a policy written before it existed.
template <class Policy>
constexpr int idle_adaptive_us_of() {
    if constexpr (requires { Policy::idle_adaptive_us; }) {
        return Policy::idle_adaptive_us;
    } else {
        return DefaultPolicy::idle_adaptive_us;
    }
}

/// A stage's IdleBudget: learns its waits for work (see DefaultPolicy::idle_adaptive_us).
template <class Policy>
using IdleBudget = BasicIdleBudget<idle_adaptive_us_of<Policy>()>;

/// How every stage waits (see DefaultPolicy::idle_spins, idle_yields and
/// idle_adaptive_us): `attempt` (non-blocking; returns what it took, 0 for nothing) is
/// polled idle_spins times, then once after each of idle_yields
/// std::this_thread::yield() calls, then (with a `budget`) after further yields for as
/// long as the budget allows; when it still finds nothing, `park` blocks in the
/// kernel. The semaphores themselves are made with no spinning of their own, so a park
/// is immediate.
template <class Policy, class Attempt, class Park>
auto idle_wait(Attempt attempt, Park park, IdleBudget<Policy>* budget = nullptr) {
    using clock = std::chrono::steady_clock;  // IdleBudget's
    auto got = attempt();
    if (got) {
        if (budget) budget->observe(clock::duration::zero());
        return got;
    }
    const auto start = budget ? clock::now() : clock::time_point();
    for (int i = 0; !got && i < Policy::idle_spins; ++i) got = attempt();
    yield_and_poll(attempt, got, idle_yields_of<Policy>());
    if (budget) yield_and_poll_until(attempt, got, start + budget->poll_for());
    if (!got) got = park();
    if (budget) budget->observe(clock::now() - start);
    return got;
}

/// idle_wait on a semaphore: takes between 1 and `max` of its count.
template <class Policy>
std::ptrdiff_t idle_wait_many(moodycamel::LightweightSemaphore& semaphore, std::ptrdiff_t max,
                              IdleBudget<Policy>* budget = nullptr) {
    return idle_wait<Policy>([&] { return semaphore.tryWaitMany(max); }, [&] { return semaphore.waitMany(max); },
                             budget);
}

/// Bounded ring with one producer. Not synchronised by itself: the pipeline's
/// semaphores order every push before the pop that reads it, and its take mutex
/// orders the pops of several executors.
class PrefetchRing {
public:
    explicit PrefetchRing(std::size_t slots) : slots_(slots) {}
    void push(TaskBase* t) noexcept {
        slots_[tail_] = t;
        tail_ = tail_ + 1 == slots_.size() ? 0 : tail_ + 1;
    }
    /// The next item, taken out of the ring; the null sentinel is left in place, so
    /// that every executor finds it.
    TaskBase* pop() noexcept {
        TaskBase* t = slots_[head_];
        if (t != nullptr) head_ = head_ + 1 == slots_.size() ? 0 : head_ + 1;
        return t;
    }

private:
    std::vector<TaskBase*> slots_;
    std::size_t head_ = 0;  // executors only
    std::size_t tail_ = 0;  // commit thread only
};

template <class Policy>
class PYSCHEDULER_HIDDEN Pipeline final : public StreamHost {
public:
    using clock = typename Policy::clock;

    /// Starts the threads: one executor per entry of `interpreters` (one worker each),
    /// and the commit thread, which runs in the first worker's interpreter. The
    /// pipeline ends the workers' sub-interpreters when it is destroyed. The caller
    /// may hold the main GIL, not a sub-interpreter's.
    Pipeline(std::vector<WorkerInterpreter> interpreters, std::string name, const HandlerOptions& options,
             ProcessState& process, PauseRegistry& pauses)
        : name_(std::move(name)),
          options_(options),
          staged_capacity_(options.batch_size * options.prefetch_depth * options.workers),
          ring_(staged_capacity_ + 1),  // + 1: the shutdown sentinel never waits for room
          room_(static_cast<std::ptrdiff_t>(staged_capacity_), 0),  // 0: no spinning (idle_wait)
          ready_(0, 0),
          waiting_(&Pipeline::queue_ready, &Pipeline::cancel_waiting, this),
          batch_sizes_(batch_size_bounds(options.batch_size)),
          batch_seconds_(Histogram::latency_seconds()),
          item_seconds_(Histogram::latency_seconds()),
          process_(process),
          pauses_(pauses) {
        for (auto& interpreter : interpreters) workers_.push_back(std::make_unique<Worker>(std::move(interpreter)));
        workers_without_a_call_.store(workers_.size(), std::memory_order_relaxed);
        if (options.queue_capacity > 0) {
            free_slots_ = std::make_unique<moodycamel::LightweightSemaphore>(
                static_cast<std::ptrdiff_t>(options.queue_capacity), 0);
        }
        process_.live_handlers.fetch_add(1, std::memory_order_acq_rel);
        try {
            commit_thread_ = std::thread([this] { commit_loop(); });
            name_thread(commit_thread_, "pys-commit");
            for (std::size_t i = 0; i < workers_.size(); ++i) {
                workers_[i]->thread = std::thread([this, &worker = *workers_[i]] { executor_loop(worker); });
                name_thread(workers_[i]->thread, ("pys-exec-" + std::to_string(i)).c_str());
            }
        } catch (...) {
            stopped_.store(true);
            stop_and_join();
            process_.live_handlers.fetch_sub(1, std::memory_order_acq_rel);
            throw;  // the workers' interpreters end with the members
        }
        // The manager's pause switch: a handler started while it is on starts paused.
        pause_node_.self = this;
        pause_node_.set_paused = [](void* self, bool on) noexcept {
            auto* p = static_cast<Pipeline*>(self);
            on ? p->pause() : p->resume();
        };
        if (pauses_.add(&pause_node_)) pause();
    }

    Pipeline(const Pipeline&) = delete;
    Pipeline& operator=(const Pipeline&) = delete;

    /// Drains (unless shut down already): returns once every queued item has completed.
    /// Then the workers' interpreters end (no thread state of ours is left in them).
    ~Pipeline() {
        shutdown(ShutdownMode::Drain);
        pauses_.remove(&pause_node_);
        // Counted until destroyed, not until shut down: the workers' interpreters and
        // the function still hold Python objects (see finalize_or_flush_at_exit).
        process_.live_handlers.fetch_sub(1, std::memory_order_acq_rel);
    }

    /// The interpreter of the commit thread (the first worker's): where items that
    /// were never queued drop their closures.
    const WorkerInterpreter& first_interpreter() const noexcept { return workers_.front()->interpreter; }

    /// The interpreter a synchronous invoke runs in: the main one for Main workers;
    /// for own-GIL and process workers, each worker's in turn (round robin over calls).
    const WorkerInterpreter& interpreter_for_invoke() noexcept {
        if (!several_interpreters() && !several_processes()) return first_interpreter();
        return workers_[next_invoke_.fetch_add(1, std::memory_order_relaxed) % workers_.size()]->interpreter;
    }

    /// Whether commit functions returning Python objects are refused: with several
    /// own-GIL workers, an object made on the commit thread (in the first worker's
    /// interpreter) could be run by another worker, in another interpreter.
    bool refuses_python_commits() const noexcept { return several_interpreters(); }

    /// Streams need one interpreter: a generator lives in the interpreter that made it,
    /// and any worker may take a stream's next step. A generator cannot leave a worker
    /// process either.
    bool refuses_streams() const noexcept {
        return several_interpreters() || options_.interpreter == InterpreterKind::Process;
    }

    // --- streams (stream.hpp) ------------------------------------------------

    /// A new stream, before the item that starts it is queued: from here on the
    /// pipeline keeps it alive, and shutdown waits for it, until stream_ended().
    void open_stream(const std::shared_ptr<StreamBase>& s) {
        s->set_host(this);
        std::lock_guard<std::mutex> lock(streams_mutex_);
        streams_.emplace(s.get(), s);
    }

    /// Queues a step behind whatever is queued. It needs no queue slot, and shutdown
    /// waits for every stream to end before it closes the queue, so it is never refused.
    void queue_step(StreamBase* s) noexcept override {
        stream_steps_.fetch_add(1, std::memory_order_relaxed);
        enqueued_.fetch_add(1, std::memory_order_seq_cst);  // seq_cst: see park_for_work()
        if (!enqueue_counted(s)) {  // out of memory for a queue block
            stream_steps_.fetch_sub(1, std::memory_order_relaxed);
            s->repark();
        }
    }

    void stream_ended(StreamBase* s) noexcept override {
        std::shared_ptr<StreamBase> last;  // released outside the lock
        {
            std::lock_guard<std::mutex> lock(streams_mutex_);
            auto it = streams_.find(s);
            if (it == streams_.end()) return;
            last = std::move(it->second);
            streams_.erase(it);
            if (!streams_.empty()) return;
        }
        streams_cv_.notify_all();
    }

    /// Executor: what to do with a stream after one of its steps.
    void after_step(StreamBase* s, StreamBase::After after) noexcept {
        if (after == StreamBase::After::Requeue) {
            queue_step(s);
        } else if (after == StreamBase::After::Ended) {
            stream_ended(s);
        }
    }

    /// Executor: whether a stream's step should stop after its slice: other work is
    /// waiting for this executor, or the handler is paused or being cancelled.
    bool step_should_yield() const noexcept {
        return ready_.availableApprox() > 0 || staging_pending() || paused_.load(std::memory_order_relaxed) ||
               cancel_.load(std::memory_order_relaxed);
    }

    /// Bounded queues: takes one of the queue's free slots, waiting for one (with the
    /// GIL released, if the caller held it) when `wait`; false when full and not
    /// `wait`. Unbounded queues: always true. Taken before the item is built, so a
    /// full queue costs the caller nothing (its moved arguments stay with it).
    bool reserve_slot(bool wait) {
        if (!free_slots_ || free_slots_->tryWait()) return true;
        if (!wait) return false;
        GilRelease unlocked;
        idle_wait_many<Policy>(*free_slots_, 1);
        return true;
    }

    /// Gives back a slot taken by reserve_slot() for an item that was not queued.
    void unreserve_slot() noexcept {
        if (free_slots_) free_slots_->signal();
    }

    /// Hands one item (its slot reserved) to the commit thread. False when the
    /// handler is shut down: the item was not queued.
    bool submit(TaskBase* task) {
        // Counted before the stopped_ check, both seq_cst: a producer that finds the
        // handler running was counted before shutdown() set stopped_, so the commit
        // thread, which stops only once it has taken every counted item, waits for
        // this one even if it lands behind the sentinel. The same count tells a commit
        // thread about to park that this item is on its way (park_for_work()). A
        // refused producer takes its count back. One locked instruction an item for
        // all of this.
        const std::uint64_t number = enqueued_.fetch_add(1, std::memory_order_seq_cst) + 1;
        if (stopped_.load(std::memory_order_seq_cst)) {
            uncount();
            return false;
        }
        stamp_queued(task);
        if (!enqueue_counted(task)) throw std::bad_alloc();
        if (number % kStallCheckEvery == 0) offer_core_if_staging_stalled(number);
        return true;
    }

    /// While paused no batch starts: executors hold what they took until resume(); the
    /// commit thread keeps staging until the ring is full, and producers keep queueing.
    /// After shutdown() has begun it does nothing: a draining handler must not park.
    void pause() noexcept {
        std::lock_guard<std::mutex> lock(pause_mutex_);  // orders it with shutdown()'s resume()
        if (!stopped_.load(std::memory_order_seq_cst)) paused_.store(true, std::memory_order_release);
    }
    void resume() noexcept {
        {
            std::lock_guard<std::mutex> lock(pause_mutex_);
            paused_.store(false, std::memory_order_release);
        }
        pause_cv_.notify_all();
    }
    bool paused() const noexcept { return paused_.load(std::memory_order_acquire); }

    /// Items whose inputs are not all ready (see dependency.hpp).
    WaitRegistry& waiting() noexcept { return waiting_; }

    /// Stamps every item when it is queued (stamp_queued), so each needs ItemExtras.
    bool stamps_items() const noexcept { return options_.queue_timeout.count() > 0 || options_.measure_latency; }

    /// Orders the commit thread's waiting items from now on (a nonzero ItemOptions::priority).
    void note_priority() noexcept {
        if (!prioritized_.load(std::memory_order_relaxed)) prioritized_.store(true, std::memory_order_relaxed);
    }

    /// Completes an item that will not go through the pipeline (refused, cancelled
    /// while waiting for inputs) with `error`: drops its closures under the GIL of the
    /// first worker's interpreter, gives its queue slot back and fulfils its future.
    void complete_unqueued(TaskBase* task, std::exception_ptr error) noexcept {
        unreserve_slot();
        {
            auto gil = first_interpreter().hold();
            task->fail(std::move(error));
            task->release_closures();
        }
        const GroupState::Report report = task->complete();
        GroupState::report(&report, 1);
    }

    /// Stops the pipeline; idempotent, and safe while producers are still calling
    /// submit() (which then returns false). Drain: every queued item runs. Cancel:
    /// items not yet handed to Python fail with Cancelled; a batch already in Python
    /// finishes (in every worker). Returns when the commit thread and every worker have
    /// exited. Not from the handler's own threads (its commit functions or callbacks):
    /// they cannot wait for themselves.
    void shutdown(ShutdownMode mode) {
        if (is_own_thread()) {
            throw std::logic_error("pyscheduler: " + name_ +
                                   " shut down or destroyed from its own commit function or callback");
        }
        std::lock_guard<std::mutex> lock(shutdown_mutex_);
        if (stopped_.load(std::memory_order_relaxed)) return;
        if (mode == ShutdownMode::Cancel) cancel_.store(true, std::memory_order_release);
        stopped_.store(true, std::memory_order_seq_cst);  // after cancel_: stopped() implies the mode is set
        resume();  // a paused handler drains or cancels like any other
        // Items waiting for inputs first: they are queued (Drain: this waits for inputs
        // of other handlers) or failed, before the sentinel closes the queue.
        if (mode == ShutdownMode::Drain) {
            GilRelease unlocked;  // the inputs may need the GIL to complete
            waiting_.close_and_wait();
        } else {
            std::vector<TaskBase*> taken;
            {
                GilRelease unlocked;
                taken = waiting_.close_and_take();
            }
            for (TaskBase* t : taken) cancel_waiting(this, t);
        }
        // Streams next: their steps go through the queue, so it stays open until every
        // stream has ended (Drain: read to its end or closed by its consumer; Cancel:
        // a parked stream gets a step, and every step fails with Cancelled).
        {
            GilRelease unlocked;  // the executors need the GIL to end them
            std::unique_lock<std::mutex> streams(streams_mutex_);
            if (mode == ShutdownMode::Cancel) {
                for (auto& open : streams_) open.first->unpark();
            }
            streams_cv_.wait(streams, [&] { return streams_.empty(); });
        }
        stop_and_join();
    }

    bool stopped() const noexcept { return stopped_.load(std::memory_order_acquire); }

    /// The error of an item refused because the handler is shut down.
    std::exception_ptr refused() const {
        return std::make_exception_ptr(Cancelled(name_ + ": the handler was shut down before this item was queued"));
    }

    const std::string& name() const noexcept { return name_; }
    const HandlerOptions& options() const noexcept { return options_; }

    QueueStats stats() const {
        QueueStats s;
        const auto enq = enqueued_.load(std::memory_order_relaxed);
        const auto deq = dequeued_.load(std::memory_order_relaxed);
        const auto staged = staged_.load(std::memory_order_relaxed);
        const auto taken = taken_.load(std::memory_order_relaxed);
        s.total_enqueued = enq - stream_steps_.load(std::memory_order_relaxed);
        s.commit_queue_size = enq > deq ? static_cast<std::size_t>(enq - deq) : 0;
        s.execute_queue_size = staged > taken ? static_cast<std::size_t>(staged - taken) : 0;
        s.waiting = waiting_.size();
        s.completed = completed_.load(std::memory_order_relaxed);
        s.failed = failed_.load(std::memory_order_relaxed);
        s.timed_out = timed_out_.load(std::memory_order_relaxed);
        s.producer_yields = producer_yields_.load(std::memory_order_relaxed);
        s.commit_batch_size_ema = commit_batch_ema_.load(std::memory_order_relaxed);
        s.execute_batch_size_ema = execute_batch_ema_.load(std::memory_order_relaxed);
        s.commit_ns_per_batch_ema = commit_ns_ema_.load(std::memory_order_relaxed);
        s.execute_ns_per_batch_ema = execute_ns_ema_.load(std::memory_order_relaxed);
        s.batch_sizes = batch_sizes_.snapshot();
        if constexpr (Policy::collect_stats) s.batch_seconds = batch_seconds_.snapshot();
        if (options_.measure_latency) s.item_seconds = item_seconds_.snapshot();
        s.workers.reserve(workers_.size());
        for (const auto& w : workers_) {
            s.workers.push_back({w->batches.load(std::memory_order_relaxed), w->items.load(std::memory_order_relaxed),
                                 w->busy_ns.load(std::memory_order_relaxed)});
        }
        return s;
    }

private:
    /// One executor of the worker set, with the interpreter it runs in.
    struct Worker {
        explicit Worker(WorkerInterpreter i) noexcept : interpreter(std::move(i)) {}
        WorkerInterpreter interpreter;
        std::thread thread;
        alignas(64) std::atomic<std::uint64_t> batches{0};  // written by its thread only
        std::atomic<std::uint64_t> items{0};
        std::atomic<std::uint64_t> busy_ns{0};
    };

    /// Several own-GIL workers, each in an interpreter of its own (Main workers share one).
    bool several_interpreters() const noexcept {
        return workers_.size() > 1 && workers_.front()->interpreter.sub() != nullptr;
    }

    bool several_processes() const noexcept {
        return workers_.size() > 1 && options_.interpreter == InterpreterKind::Process;
    }

    bool is_own_thread() const noexcept {
        const auto self = std::this_thread::get_id();
        if (self == commit_thread_.get_id()) return true;
        for (const auto& w : workers_) {
            if (self == w->thread.get_id()) return true;
        }
        return false;
    }

    /// Queues an item already counted in enqueued_ (seq_cst) and wakes the commit
    /// thread if it parked. False when the queue is out of memory for a block: the
    /// count is taken back and the item is the caller's again.
    bool enqueue_counted(TaskBase* t) noexcept {
        if (!queue_.enqueue(t)) {
            uncount();
            return false;
        }
        wake_commit_thread();
        return true;
    }

    /// An item counted in enqueued_ that was not queued after all: its count is taken
    /// back, and the commit thread woken in case it saw the count and waits for the
    /// item (park_for_work()).
    void uncount() noexcept {
        enqueued_.fetch_sub(1, std::memory_order_seq_cst);
        wake_commit_thread();
    }

    /// After an item counted in enqueued_ (seq_cst) is in the queue, or its count was
    /// taken back: signals the commit thread's semaphore if it is parked or about to
    /// park. A plain load of a line the commit thread writes only when it parks.
    void wake_commit_thread() noexcept {
        if (commit_parked_.load(std::memory_order_seq_cst)) work_.signal();
    }

    /// Producers look at the commit thread's progress once every this many items.
    static constexpr std::uint64_t kStallCheckEvery = 256;

    /// A producer that queues faster than the commit thread stages can keep the commit
    /// thread from running at all: on two cores with the executor on the other one, a
    /// commit thread that left the producer's core still runnable (a yield of its own,
    /// or preempted) waited up to a scheduler tick (4 ms) behind it, while the executor
    /// ran its ring dry and idled. So once every kStallCheckEvery items queued (by any
    /// producer), the producer that queued the last one yields its core when the ring
    /// is less than half full, more than a batch waits to be staged, and the commit
    /// thread staged nothing since the last check (QueueStats::producer_yields counts
    /// these). A full ring means the commit thread waits for the executors, which a
    /// yield does not help. A yield with nothing else runnable on the core returns at
    /// once. See docs/performance-notes.md ("The commit thread behind a flooding producer").
    void offer_core_if_staging_stalled(std::uint64_t enqueued) noexcept {
        const std::uint64_t staged = staged_.load(std::memory_order_relaxed);
        const std::uint64_t before = staged_at_check_.exchange(staged, std::memory_order_relaxed);
        if (staged != before || enqueued - staged <= options_.batch_size) return;
        const std::uint64_t taken = taken_.load(std::memory_order_relaxed);
        if (staged < taken + staged_capacity_ / 2) {  // relaxed counters: taken may read ahead of staged
            producer_yields_.fetch_add(1, std::memory_order_relaxed);
            std::this_thread::yield();
        }
    }

    void stop_and_join() {
        queue_.enqueue(nullptr);  // the sentinel; not counted in enqueued_
        work_.signal();           // uncounted, so no producer's signal covers it
        GilRelease unlocked;      // the threads need the GIL to finish
        if (commit_thread_.joinable()) commit_thread_.join();
        // When no executor could be started, nothing was queued yet, and the sentinel
        // the commit thread pushed simply stays in the ring.
        for (auto& w : workers_) {
            if (w->thread.joinable()) w->thread.join();
        }
    }

    // --- commit thread -------------------------------------------------------

    /// An item is queued: its HandlerOptions::queue_timeout and its latency
    /// (HandlerOptions::measure_latency) start now; one clock read serves both.
    /// Every item of this handler is made with ItemExtras (make_task).
    void stamp_queued(TaskBase* task) const noexcept {
        if (!stamps_items()) return;
        ItemExtras& x = *task->extras;
        const auto now = std::chrono::steady_clock::now();
        if (options_.queue_timeout.count() > 0) x.deadline = std::min(x.deadline, now + options_.queue_timeout);
        x.queued_at = now;
    }

    /// WaitRegistry's way in: an item whose last input just arrived, queued from the
    /// thread that completed that input. Its slot was reserved when it was made, and a
    /// draining shutdown waits for it before the sentinel, so it is never refused.
    static void queue_ready(void* self, TaskBase* task) noexcept {
        auto& p = *static_cast<Pipeline*>(self);
        p.stamp_queued(task);
        p.enqueued_.fetch_add(1, std::memory_order_seq_cst);  // seq_cst: see park_for_work()
        if (!p.enqueue_counted(task)) p.complete_unqueued(task, std::make_exception_ptr(std::bad_alloc()));
    }

    /// WaitRegistry's way out under shutdown(Cancel): an item that waited for inputs.
    static void cancel_waiting(void* self, TaskBase* task) noexcept {
        auto& p = *static_cast<Pipeline*>(self);
        std::exception_ptr e;
        try {
            e = std::make_exception_ptr(
                Cancelled(p.name_ + ": cancelled by shutdown(ShutdownMode::Cancel) while waiting for its inputs"));
        } catch (...) {
            e = std::current_exception();
        }
        p.complete_unqueued(task, std::move(e));
    }

    /// Waits for work first and for ring room second. An idle commit thread therefore
    /// parks on the queue, never on `room_`: when the executor takes an item from the
    /// ring, its room_.signal() finds no thread to wake, and the item's way into Python
    /// costs no futex wake-up (on 2 cores that wake-up added about a third to a round
    /// trip after an idle gap). Dequeued items count as waiting to be committed (stats,
    /// bounded queue) until they have room in the ring.
    ///
    /// Fifo without priorities commits in dequeue order, one bulk at a time. Otherwise
    /// (Lifo, or once any item had a nonzero priority) dequeued items go into a heap,
    /// and whenever there is room the best of them are committed, after everything that
    /// arrived in the meantime has joined the heap.
    void commit_loop() {
        SubInterpreter* const sub = first_interpreter().sub();
        ThreadContext context(sub);
        IdleBudget<Policy> budget;  // of its waits for work (not for room: that wait is the executors' pace)
        std::vector<TaskBase*> bulk(std::max(staged_capacity_, kReorderBulk));
        struct Ranked {  // reordering only: an item, its priority and its arrival number
            int priority;
            std::uint64_t arrival;
            TaskBase* task;
        };
        std::vector<Ranked> heap;
        const bool lifo = options_.order == Order::Lifo;
        std::uint64_t arrivals = 0;
        auto before = [lifo](const Ranked& a, const Ranked& b) {  // heap order: true if a goes after b
            if (a.priority != b.priority) return a.priority < b.priority;
            return lifo ? a.arrival < b.arrival : a.arrival > b.arrival;
        };
        bool stopping = false;
        std::uint64_t dequeued = 0;
        // Keeps the items of bulk[0, got), drops the sentinel; returns how many are left.
        auto sift = [&](std::size_t got) {
            std::size_t n = 0;
            for (std::size_t i = 0; i < got; ++i) {
                if (bulk[i] == nullptr) {
                    stopping = true;
                } else {
                    bulk[n++] = bulk[i];
                }
            }
            return n;
        };
        auto into_heap = [&](std::size_t n) {
            for (std::size_t i = 0; i < n; ++i) {
                heap.push_back({bulk[i]->priority, arrivals++, bulk[i]});
                std::push_heap(heap.begin(), heap.end(), before);
            }
        };
        // The eventcount's parking side. The flag is set first, then the queue and the
        // count are read (seq_cst): a producer counts its item and then reads the flag
        // (seq_cst), so either it sees the flag and signals once its item is in, or this
        // thread sees its count. A count above what this thread has taken, with the
        // queue found empty, is an item between its count and its enqueue (or a refused
        // one, about to be taken back): this thread yields and looks again instead of
        // parking. Returns 0 only while stopping, once every counted item is in.
        auto park_for_work = [&]() -> std::size_t {
            std::size_t got = 0;
            for (;;) {
                commit_parked_.store(true, std::memory_order_seq_cst);
                got = queue_.try_dequeue_bulk(bulk.data(), staged_capacity_);
                if (got > 0) break;
                if (enqueued_.load(std::memory_order_seq_cst) != dequeued) {
                    std::this_thread::yield();
                    continue;
                }
                if (stopping) break;
                work_.wait();
            }
            commit_parked_.store(false, std::memory_order_relaxed);
            // Signals of producers that saw the flag while this thread was waking: each
            // park decides on the queue and the count, never on a pending signal, so they
            // are dropped rather than turned into idle rounds of the next park.
            work_.tryWaitMany(std::numeric_limits<std::ptrdiff_t>::max());
            return got;
        };
        auto wait_for_work = [&] {
            return idle_wait<Policy>([&] { return queue_.try_dequeue_bulk(bulk.data(), staged_capacity_); },
                                     park_for_work, &budget);
        };
        // Everything queued now joins the heap (bounded, so that producers faster than
        // this thread cannot keep it from committing).
        auto drain_into_heap = [&] {
            for (int round = 0; round < kDrainRounds; ++round) {
                const std::size_t got = queue_.try_dequeue_bulk(bulk.data(), bulk.size());
                into_heap(sift(got));
                if (got < bulk.size()) break;
            }
        };
        for (;;) {
            // seq_cst: see submit()
            if (stopping && heap.empty() && dequeued == enqueued_.load(std::memory_order_seq_cst)) break;
            if (!heap.empty()) {
                drain_into_heap();
            } else {
                const std::size_t n = sift(wait_for_work());
                // Read after the dequeue: an item's priority flag is set before it is queued.
                if (!lifo && !prioritized_.load(std::memory_order_relaxed)) {
                    for (std::size_t placed = 0; placed < n;) {
                        const auto room = static_cast<std::size_t>(
                            idle_wait_many<Policy>(room_, static_cast<std::ptrdiff_t>(n - placed)));
                        stage(sub, context, bulk.data() + placed, room, dequeued);
                        placed += room;
                    }
                    continue;
                }
                into_heap(n);
                if (heap.empty()) continue;
            }
            const auto room = static_cast<std::size_t>(idle_wait_many<Policy>(
                room_, static_cast<std::ptrdiff_t>(std::min(heap.size(), staged_capacity_))));
            drain_into_heap();  // what arrived while this thread waited for room competes too
            for (std::size_t i = 0; i < room; ++i) {  // room <= heap.size(): the heap only grew
                std::pop_heap(heap.begin(), heap.end(), before);
                bulk[i] = heap.back().task;
                heap.pop_back();
            }
            stage(sub, context, bulk.data(), room, dequeued);
        }
        ring_.push(nullptr);
        ready_.signal(1);
    }

    /// When reordering, items are dequeued in bulks of at least this many (the heap
    /// should see every waiting item even when the ring is small), and at most
    /// kDrainRounds bulks before each commit.
    static constexpr std::size_t kReorderBulk = 1024;
    static constexpr int kDrainRounds = 64;

    /// Commits `count` items that have room in the ring and hands them over, one batch
    /// at a time, so the executor can start on the first batch while later ones are
    /// still being committed.
    void stage(SubInterpreter* sub, ThreadContext& context, TaskBase** items, std::size_t count,
               std::uint64_t& dequeued) {
        dequeued += count;
        dequeued_.store(dequeued, std::memory_order_relaxed);
        if (free_slots_) {  // after the count: stats stay <= capacity. Stream steps hold no slot.
            std::ptrdiff_t slots = 0;
            for (std::size_t i = 0; i < count; ++i) slots += items[i]->stream_step ? 0 : 1;
            if (slots > 0) free_slots_->signal(slots);
        }
        for (std::size_t first = 0; first < count; first += options_.batch_size) {
            const std::size_t n = std::min(options_.batch_size, count - first);
            commit_chunk(sub, context, items + first, n);
            for (std::size_t i = 0; i < n; ++i) ring_.push(items[first + i]);
            staged_.fetch_add(n, std::memory_order_relaxed);
            ready_.signal(static_cast<std::ptrdiff_t>(n));
        }
    }

    void commit_chunk(SubInterpreter* sub, ThreadContext& context, TaskBase** items, std::size_t n) {
        const auto start = now();
        if (cancel_.load(std::memory_order_acquire)) {  // passed on: the executor drops them under the GIL
            for (std::size_t i = 0; i < n; ++i) items[i]->fail(cancelled());
            return;
        }
        fail_unwanted(items, n, "while it waited to be committed");
        bool needs_gil = false;
        for (std::size_t i = 0; i < n; ++i) {
            if (items[i]->failed()) continue;
            if (items[i]->commit_needs_gil()) {
                needs_gil = true;
            } else {
                items[i]->commit(name_);
            }
        }
        if (needs_gil) {  // one GIL hold for every Python-object commit of the chunk
            InterpreterHold gil(sub, &context);
            for (std::size_t i = 0; i < n; ++i) {
                if (!items[i]->failed() && items[i]->commit_needs_gil()) items[i]->commit(name_);
            }
        }
        record(commit_batch_ema_, commit_ns_ema_, n, start);
    }

    // --- executor thread -----------------------------------------------------

    /// The executor's side of the ring: how it takes a batch. One per executor thread.
    class Intake {
    public:
        explicit Intake(Pipeline& p)
            : p_(p),
              batch_size_(static_cast<std::ptrdiff_t>(p.options_.batch_size)),
              delay_(p.options_.max_batch_delay),
              shared_ring_(p.workers_.size() > 1),
              // Ring slots this worker has emptied but not yet given back (room_). Under
              // load the commit thread waits for room, so every give-back wakes it: a
              // system call, and a context switch that takes a core from a worker running
              // Python. Slots go back in bulks of half this worker's share of the ring (so
              // with prefetch_depth 1, at once), and always before this worker waits for
              // anything, so the commit thread never waits on room that a waiting worker holds.
              return_at_(std::max<std::ptrdiff_t>(
                  1, batch_size_ * static_cast<std::ptrdiff_t>(p.options_.prefetch_depth) / 2)) {}

        /// Whether this executor has reached the shutdown sentinel: it takes nothing more.
        bool stopped() const noexcept { return stop_; }

        /// Waits for a batch and takes up to batch_size items (see HandlerOptions::
        /// max_batch_delay); holds it while the handler is paused. Returns how many it
        /// took into `batch`: 0 only at the sentinel. Items no longer wanted are failed.
        std::size_t take_batch(TaskBase** batch) {
            std::size_t m = 0;
            std::ptrdiff_t ready = p_.ready_.tryWaitMany(batch_size_);
            if (ready == 0) {
                give_back_room();
                ready = idle_wait_many<Policy>(p_.ready_, batch_size_, &budget_);
            }
            take(batch, m, ready);
            auto missing = [&] { return batch_size_ - static_cast<std::ptrdiff_t>(m); };
            if (delay_.count() > 0) {  // wait up to the delay for the batch to fill
                const auto deadline = clock::now() + delay_;
                while (!stop_ && missing() > 0) {
                    give_back_room();
                    const auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - clock::now());
                    if (left.count() <= 0) break;
                    const auto more = p_.ready_.waitMany(missing(), left.count());
                    if (more == 0) break;
                    take(batch, m, more);
                }
            } else {
                // Opportunistic batching tops the batch up without waiting for nothing:
                // while more items are accepted but not yet staged (queued, or being
                // committed), it hands its room back, yields to the threads that stage
                // them and takes what they staged, a few times at most. With nothing
                // pending it runs at once, so a lone item waits for nothing.
                for (int i = 0; i < kTopUpYields && !stop_ && missing() > 0 && p_.staging_pending(); ++i) {
                    give_back_room();
                    std::this_thread::yield();
                    if (const auto more = p_.ready_.tryWaitMany(missing())) take(batch, m, more);
                }
            }
            count_taken(m);
            if (m > 0 && p_.paused_.load(std::memory_order_acquire)) {  // hold the batch until resume()
                give_back_room();
                p_.wait_while_paused();
            }
            p_.fail_unwanted(batch, m, "in the prefetch ring");
            return m;
        }

        /// A batch of what is ready now, without waiting: nothing while the handler is
        /// paused, after the sentinel, and (with max_batch_delay) while fewer items
        /// than a full batch are ready.
        std::size_t take_ready(TaskBase** batch) {
            if (stop_ || p_.paused_.load(std::memory_order_acquire)) return 0;
            if (delay_.count() > 0 && static_cast<std::ptrdiff_t>(p_.ready_.availableApprox()) < batch_size_) return 0;
            std::size_t m = 0;
            take(batch, m, p_.ready_.tryWaitMany(batch_size_));
            count_taken(m);
            p_.fail_unwanted(batch, m, "in the prefetch ring");
            return m;
        }

        void give_back_room() {
            if (unreturned_ > 0) p_.room_.signal(std::exchange(unreturned_, 0));
        }

    private:
        /// Pops `acquired` items at once after batch[0, m): the sentinel ends any wait.
        void take(TaskBase** batch, std::size_t& m, std::ptrdiff_t acquired) {
            std::unique_lock<std::mutex> lock(p_.take_mutex_, std::defer_lock);
            if (shared_ring_) lock.lock();
            const std::size_t before = m;
            for (std::ptrdiff_t i = 0; i < acquired; ++i) {
                if (TaskBase* t = p_.ring_.pop()) {
                    batch[m++] = t;
                } else {  // the sentinel, always the last item: its count goes back for the next worker
                    stop_ = true;
                    p_.ready_.signal(acquired - i);
                    break;
                }
            }
            unreturned_ += static_cast<std::ptrdiff_t>(m - before);
        }

        void count_taken(std::size_t m) {
            if (unreturned_ >= return_at_ || stop_) give_back_room();
            p_.taken_.fetch_add(m, std::memory_order_relaxed);
        }

        Pipeline& p_;
        const std::ptrdiff_t batch_size_;
        const std::chrono::microseconds delay_;
        const bool shared_ring_;
        const std::ptrdiff_t return_at_;
        std::ptrdiff_t unreturned_ = 0;
        bool stop_ = false;
        IdleBudget<Policy> budget_;
    };

    void executor_loop(Worker& worker) {
        ThreadContext context(worker.interpreter.sub());  // the thread state, made now, not inside the first batch
        Intake intake(*this);
        if (options_.interpreter == InterpreterKind::Process) {
            process_executor_loop(worker, context, intake);
            return;
        }
        std::vector<TaskBase*> batch(options_.batch_size);
        std::vector<GroupState::Report> reports(options_.batch_size);  // what the batch's items tell their groups
        std::vector<StreamBase*> stream_steps(options_.batch_size);     // the stream steps among a batch
        std::vector<StreamBase::After> afters(options_.batch_size);
        while (!intake.stopped()) {
            const std::size_t m = intake.take_batch(batch.data());
            std::size_t items = 0;
            std::size_t steps = 0;
            for (std::size_t i = 0; i < m; ++i) {
                if (batch[i]->stream_step) {
                    stream_steps[steps++] = static_cast<StreamBase*>(batch[i]);
                } else {
                    batch[items++] = batch[i];
                }
            }
            if (items > 0) run_batch(worker, context, batch.data(), reports.data(), items);
            if (steps > 0) run_steps(worker, context, stream_steps.data(), afters.data(), steps);
        }
    }

    /// A batch of a process worker, from the start of its call to its end.
    struct Flight {
        std::vector<TaskBase*> items;
        std::size_t n = 0;          // items taken
        std::size_t live = 0;       // items[0, live) are in the call; the others failed before it
        bool went_inline = false;   // another call may be started behind it (ProcessWorker.start)
        typename clock::time_point start{};  // when it began to run (statistics)
    };

    /// The executor of a process worker. It keeps its worker process busy: while a
    /// call runs, the next batch's call is already sent (ProcessWorker.start), so the
    /// child finds it when it replies, instead of waiting for this thread to wake,
    /// deliver and convert (tens of microseconds a call on a 2-vCPU VM). At most
    /// kProcessCallsInFlight calls are in flight; one is sent behind another only when
    /// that one's payload went inline and every other worker of the handler has a call
    /// running. Each GIL hold finishes the oldest call, delivers its results and tops
    /// the calls in flight up again before the futures are fulfilled outside the GIL.
    void process_executor_loop(Worker& worker, ThreadContext& context, Intake& intake) {
        constexpr std::size_t kSlots = kProcessCallsInFlight + 1;  // in flight, and one being settled
        std::array<Flight, kSlots> flights;
        for (auto& f : flights) f.items.resize(options_.batch_size);
        std::vector<TaskBase*> unstarted;  // items of batches whose call could not start
        unstarted.reserve(kSlots * options_.batch_size);
        std::vector<GroupState::Report> reports(kSlots * options_.batch_size);
        py::object start_fn;
        py::object finish_fn;
        {
            InterpreterHold gil(worker.interpreter.sub(), &context);
            start_fn = worker.interpreter.function().attr("start");
            finish_fn = worker.interpreter.function().attr("finish");
        }
        std::size_t head = 0;   // the oldest call in flight
        std::size_t count = 0;  // calls in flight
        // GIL held. Starts the call of a batch taken into the next free slot; a batch
        // whose every item failed before the call goes to `unstarted`.
        auto start = [&](std::size_t n) {
            Flight& f = flights[(head + count) % kSlots];
            f.n = n;
            if (begin_call(start_fn, f)) {
                if (count++ == 0) workers_without_a_call_.fetch_sub(1, std::memory_order_acq_rel);
                return;
            }
            for (std::size_t i = 0; i < n; ++i) {
                f.items[i]->release_closures();
                unstarted.push_back(f.items[i]);
            }
        };
        auto settle_unstarted = [&] {
            if (unstarted.empty()) return;
            if (reports.size() < unstarted.size()) reports.resize(unstarted.size());  // batches that kept failing
            settle(worker, unstarted.data(), reports.data(), unstarted.size(), now());
            unstarted.clear();
        };
        // GIL held. Starts batches of what is ready while a call may start: when none
        // is in flight, or behind one that went inline while every other worker has a
        // call running (an idle worker takes the batch at once; behind a call it would
        // wait for that call), up to kProcessCallsInFlight.
        auto start_ready = [&] {
            while (count < kProcessCallsInFlight) {
                if (count > 0 && (!flights[(head + count - 1) % kSlots].went_inline ||
                                  workers_without_a_call_.load(std::memory_order_acquire) > 0)) {
                    return;
                }
                const std::size_t n = intake.take_ready(flights[(head + count) % kSlots].items.data());
                if (n == 0) return;
                start(n);
            }
        };
        for (;;) {
            std::size_t taken = 0;  // a batch to start, when no call is in flight
            if (count == 0) {
                if (intake.stopped()) break;
                taken = intake.take_batch(flights[head].items.data());
                if (taken == 0) continue;
            }
            intake.give_back_room();  // before this thread waits for a reply
            Flight* done = nullptr;
            {
                InterpreterHold gil(worker.interpreter.sub(), &context);
                if (taken > 0) start(taken);
                if (count > 0) {
                    start_ready();
                    done = &flights[head];
                    deliver_call(done->items.data(), done->live,
                                 [&] { return PyObject_CallNoArgs(finish_fn.ptr()); });
                    for (std::size_t i = 0; i < done->n; ++i) done->items[i]->release_closures();
                    head = (head + 1) % kSlots;
                    if (--count > 0) {
                        flights[head].start = now();  // the next call runs from here
                    } else {
                        workers_without_a_call_.fetch_add(1, std::memory_order_acq_rel);
                    }
                    start_ready();
                }
            }
            if (done != nullptr) settle(worker, done->items.data(), reports.data(), done->n, done->start);
            settle_unstarted();
        }
        InterpreterHold gil(worker.interpreter.sub(), &context);
        start_fn = py::object();
        finish_fn = py::object();
    }

    /// GIL held. Converts a flight's items and starts its call (ProcessWorker.start);
    /// false when no call started (every item failed, each with its error).
    bool begin_call(const py::object& start_fn, Flight& f) {
        f.start = now();
        py::list args(f.n);
        f.live = convert_batch(f.items.data(), f.n, args);
        if (f.live == 0) return false;
        try {
            auto r = py::reinterpret_steal<py::object>(PyObject_CallOneArg(start_fn.ptr(), args.ptr()));
            if (!r) throw py::error_already_set();
            f.went_inline = r.ptr() == Py_True;
            return true;
        } catch (...) {
            fail_each(f.items.data(), f.live, capture_exception(name_));
            f.live = 0;
            return false;
        }
    }

    /// Advances the streams of `steps` (see stream.hpp), under one GIL hold.
    void run_steps(Worker& worker, ThreadContext& context, StreamBase** steps, StreamBase::After* afters,
                   std::size_t n) {
        {
            InterpreterHold gil(worker.interpreter.sub(), &context);
            for (std::size_t i = 0; i < n; ++i) afters[i] = steps[i]->step([this] { return step_should_yield(); });
        }
        for (std::size_t i = 0; i < n; ++i) after_step(steps[i], afters[i]);
    }

    /// Fails the items that are no longer wanted: Cancelled when the handler is being
    /// cancelled (shutdown(Cancel)) or their group was cancelled, Timeout when their
    /// deadline has passed (the clock is read once, and only when an item has a deadline).
    void fail_unwanted(TaskBase** items, std::size_t n, const char* where) {
        const bool cancelling = cancel_.load(std::memory_order_acquire);
        std::chrono::steady_clock::time_point now{};
        bool read = false;
        for (std::size_t i = 0; i < n; ++i) {
            TaskBase* t = items[i];
            if (t->failed()) continue;
            if (cancelling) {
                t->fail_with([&] { return cancelled(); });
                continue;
            }
            const ItemExtras* x = t->extras;
            if (!x) continue;
            if (x->group && x->group->cancelled()) {
                t->fail_with([&] {
                    return std::make_exception_ptr(
                        Cancelled(name_ + ": its group was cancelled before it reached Python"));
                });
                continue;
            }
            if (x->deadline == std::chrono::steady_clock::time_point::max()) continue;
            if (!read) {
                now = std::chrono::steady_clock::now();
                read = true;
            }
            if (now < x->deadline) continue;
            timed_out_.fetch_add(1, std::memory_order_relaxed);
            t->fail_with([&] {
                return std::make_exception_ptr(
                    Timeout(name_ + ": the item's deadline passed " + where + "; it did not run"));
            });
        }
    }

    /// Executor: parks until resume() or shutdown().
    void wait_while_paused() {
        std::unique_lock<std::mutex> lock(pause_mutex_);
        pause_cv_.wait(lock, [&] { return !paused_.load(std::memory_order_acquire); });
    }

    /// Items accepted by submit() and not yet in the ring (queued, or being committed).
    bool staging_pending() const noexcept {
        return enqueued_.load(std::memory_order_relaxed) > staged_.load(std::memory_order_relaxed);
    }

    /// Yields an executor spends at most topping up a batch (see Intake::take_batch).
    static constexpr int kTopUpYields = 8;

    /// One Python call for up to batch_size items; see TaskBase for the order of steps.
    void run_batch(Worker& worker, ThreadContext& context, TaskBase** items, GroupState::Report* reports,
                   std::size_t n) {
        const auto start = now();
        {
            InterpreterHold gil(worker.interpreter.sub(), &context);
            py::list args(n);
            const std::size_t live = convert_batch(items, n, args);
            const py::object& fn = worker.interpreter.function();
            if (live > 0) deliver_call(items, live, [&] { return PyObject_CallOneArg(fn.ptr(), args.ptr()); });
            for (std::size_t i = 0; i < n; ++i) items[i]->release_closures();
        }
        settle(worker, items, reports, n, start);
    }

    /// GIL held. Puts each item's committed value into `args`, a list of n empty slots
    /// (py::list(n): no list growth per item), moving the items that converted to the
    /// front, and cuts the list to them; an item that fails to convert fails alone.
    /// Returns how many converted.
    std::size_t convert_batch(TaskBase** items, std::size_t n, py::list& args) {
        std::size_t live = 0;
        for (std::size_t i = 0; i < n; ++i) {
            TaskBase* t = items[i];
            if (t->failed()) continue;
            try {
                PyList_SET_ITEM(args.ptr(), static_cast<Py_ssize_t>(live), t->to_python().release().ptr());
            } catch (...) {
                t->fail(capture_exception("converting the committed value for " + name_));
                continue;
            }
            std::swap(items[live++], items[i]);
        }
        Py_SET_SIZE(args.ptr(), static_cast<Py_ssize_t>(live));  // the empty slots after them are not in the list
        return live;
    }

    /// After a batch's GIL hold: counts it and fulfils its items' futures.
    void settle(Worker& worker, TaskBase** items, GroupState::Report* reports, std::size_t n,
                typename clock::time_point start) {
        // Count before fulfilling: whoever holds every future sees the counts too.
        std::uint64_t failed = 0;
        for (std::size_t i = 0; i < n; ++i) failed += items[i]->failed() ? 1 : 0;
        failed_.fetch_add(failed, std::memory_order_relaxed);
        completed_.fetch_add(n - failed, std::memory_order_relaxed);
        worker.batches.fetch_add(1, std::memory_order_relaxed);
        worker.items.fetch_add(n, std::memory_order_relaxed);
        const double ns = record(execute_batch_ema_, execute_ns_ema_, n, start);  // one clock read per batch
        worker.busy_ns.fetch_add(static_cast<std::uint64_t>(ns), std::memory_order_relaxed);
        batch_sizes_.observe(static_cast<double>(n));
        if constexpr (Policy::collect_stats) batch_seconds_.observe(ns * 1e-9);
        if (options_.measure_latency) observe_latencies(items, n);
        for (std::size_t i = 0; i < n; ++i) reports[i] = items[i]->complete();  // frees the item
        GroupState::report(reports, n);
    }

    /// GIL held. `call()` (a new reference, or null with a Python error set) is the
    /// function's result for the batch: result i goes to item i. Anything raised fails
    /// every item.
    template <class Call>
    void deliver_call(TaskBase** items, std::size_t n, Call call) {
        try {
            py::object result = py::reinterpret_steal<py::object>(call());
            if (!result) throw py::error_already_set();
            PyObject* r = result.ptr();
            if (PyList_Check(r) || PyTuple_Check(r)) {
                check_length(PySequence_Fast_GET_SIZE(r), n);
                PyObject** results = PySequence_Fast_ITEMS(r);
                for (std::size_t i = 0; i < n; ++i) deliver_one(items[i], results[i]);
            } else if (PySequence_Check(r) && !PyUnicode_Check(r) && !PyBytes_Check(r) && !PyByteArray_Check(r)) {
                const Py_ssize_t len = PySequence_Size(r);
                if (len < 0) throw py::error_already_set();
                check_length(len, n);
                for (std::size_t i = 0; i < n; ++i) {
                    auto item = py::reinterpret_steal<py::object>(PySequence_GetItem(r, static_cast<Py_ssize_t>(i)));
                    if (!item) {
                        items[i]->fail(capture_result_error(i));
                        continue;
                    }
                    deliver_one(items[i], item.ptr());
                }
            } else {
                throw ResultError(name_ + " returned " + Py_TYPE(r)->tp_name + ", expected a list of " +
                                  std::to_string(n) + " results (one per item of the batch)");
            }
        } catch (...) {
            fail_each(items, n, capture_exception(name_));
        }
    }

    /// Fails every item with `e`. Each future gets an exception object of its own
    /// (they are rethrown and destroyed on different threads); the type is looked up
    /// with one rethrow, not one per item, since this runs with the GIL held.
    static void fail_each(TaskBase** items, std::size_t n, std::exception_ptr e) {
        try {
            std::rethrow_exception(e);
        } catch (const Error& error) {
            for (std::size_t i = 0; i + 1 < n; ++i) items[i]->fail(error.clone());
        } catch (...) {  // a foreign type cannot be copied generically: shared
            for (std::size_t i = 0; i + 1 < n; ++i) items[i]->fail(e);
        }
        items[n - 1]->fail(std::move(e));
    }

    std::exception_ptr cancelled() const {
        return std::make_exception_ptr(Cancelled(name_ + ": cancelled by shutdown(ShutdownMode::Cancel)"));
    }

    /// GIL held. An exception instance in place of a result fails that item alone (the
    /// protocol of the Python helper @pyscheduler.batched); anything else goes to the
    /// item's callback.
    void deliver_one(TaskBase* item, PyObject* result) const {
        if (PyExceptionInstance_Check(result)) {
            py::handle type(reinterpret_cast<PyObject*>(Py_TYPE(result)));
            auto trace = py::reinterpret_steal<py::object>(PyException_GetTraceback(result));
            item->fail(std::make_exception_ptr(python_error_from(type, result, trace, name_)));
            return;
        }
        item->deliver(result, name_);
    }

    void check_length(Py_ssize_t len, std::size_t n) const {
        if (static_cast<std::size_t>(len) != n) {
            throw ResultError(name_ + " returned " + std::to_string(len) + " results for a batch of " +
                              std::to_string(n) + " items (expected " + std::to_string(n) + ")");
        }
    }

    std::exception_ptr capture_result_error(std::size_t i) const {
        return capture_python_error("reading result " + std::to_string(i) + " of " + name_);
    }

    // --- statistics ----------------------------------------------------------

    static typename clock::time_point now() noexcept {
        if constexpr (Policy::collect_stats) {
            return clock::now();
        } else {
            return {};
        }
    }

    /// Updates the moving averages with a bulk of `n` items begun at `start`; returns
    /// its wall time in ns (0 when the policy disables statistics).
    static double record(std::atomic<double>& size_ema, std::atomic<double>& ns_ema, std::size_t n,
                         typename clock::time_point start) noexcept {
        if constexpr (Policy::collect_stats) {
            const double ns = std::chrono::duration<double, std::nano>(clock::now() - start).count();
            update_ema(size_ema, static_cast<double>(n));
            update_ema(ns_ema, ns);
            return ns;
        } else {
            return 0;
        }
    }

    /// Bucket bounds 1, 2, 4 ... up to the first power of two >= batch_size.
    static std::vector<double> batch_size_bounds(std::size_t batch_size) {
        std::vector<double> b{1};
        while (b.back() < static_cast<double>(batch_size)) b.push_back(2 * b.back());
        return b;
    }

    /// Each item that ran in a batch: queued to now (one clock read for the batch).
    void observe_latencies(TaskBase* const* items, std::size_t n) noexcept {
        const auto end = std::chrono::steady_clock::now();
        for (std::size_t i = 0; i < n; ++i) {
            item_seconds_.observe(std::chrono::duration<double>(end - items[i]->extras->queued_at).count());
        }
    }

    static void update_ema(std::atomic<double>& ema, double x) noexcept {  // executors: several writers
        double old = ema.load(std::memory_order_relaxed);
        while (!ema.compare_exchange_weak(old, old == 0 ? x : old + Policy::stats_ema_weight * (x - old),
                                          std::memory_order_relaxed)) {
        }
    }

    std::vector<std::unique_ptr<Worker>> workers_;  // the worker set; never empty
    const std::string name_;
    const HandlerOptions options_;
    const std::size_t staged_capacity_;  // batch_size * prefetch_depth * workers

    moodycamel::ConcurrentQueue<TaskBase*> queue_;
    moodycamel::LightweightSemaphore work_{0, 0};  // the commit thread parks on it (0: no spinning)
    std::unique_ptr<moodycamel::LightweightSemaphore> free_slots_;  // bounded queues only
    PrefetchRing ring_;
    moodycamel::LightweightSemaphore room_;   // free ring slots
    moodycamel::LightweightSemaphore ready_;  // committed items in the ring
    WaitRegistry waiting_;                    // items waiting for their inputs
    std::atomic<bool> prioritized_{false};    // an item had a nonzero priority: the commit thread reorders

    alignas(64) std::atomic<std::uint64_t> enqueued_{0};  // producers
    std::atomic<std::uint64_t> staged_at_check_{0};       // producers: offer_core_if_staging_stalled()
    std::atomic<std::uint64_t> producer_yields_{0};
    alignas(64) std::atomic<bool> commit_parked_{false};  // the commit thread (read by every producer)
    alignas(64) std::atomic<std::uint64_t> dequeued_{0};  // commit thread
    std::atomic<std::uint64_t> staged_{0};
    std::atomic<double> commit_batch_ema_{0};
    std::atomic<double> commit_ns_ema_{0};
    alignas(64) std::atomic<std::uint64_t> taken_{0};  // executors
    std::mutex take_mutex_;                            // orders the executors' pops (several workers)
    std::atomic<std::size_t> workers_without_a_call_{0};  // process workers: set to the worker count
    std::atomic<std::size_t> next_invoke_{0};           // round robin of synchronous invokes
    std::atomic<std::uint64_t> completed_{0};
    std::atomic<std::uint64_t> failed_{0};
    std::atomic<std::uint64_t> timed_out_{0};
    std::atomic<std::uint64_t> stream_steps_{0};  // in enqueued_, not in QueueStats::total_enqueued
    std::mutex streams_mutex_;                    // streams_; with streams_cv_ shutdown waits for them to end
    std::condition_variable streams_cv_;
    std::unordered_map<StreamBase*, std::shared_ptr<StreamBase>> streams_;  // open streams
    std::atomic<double> execute_batch_ema_{0};
    std::atomic<double> execute_ns_ema_{0};
    Histogram batch_sizes_;    // items per Python call
    Histogram batch_seconds_;  // wall time per batch (Policy::collect_stats)
    Histogram item_seconds_;   // queued to end of batch (HandlerOptions::measure_latency)

    alignas(64) std::atomic<bool> stopped_{false};
    std::atomic<bool> cancel_{false};
    std::mutex shutdown_mutex_;
    std::atomic<bool> paused_{false};
    std::mutex pause_mutex_;  // with pause_cv_: paused executors park
    std::condition_variable pause_cv_;

    ProcessState& process_;
    PauseRegistry& pauses_;  // the manager's pause()/resume() reach this handler through pause_node_
    PauseNode pause_node_;
    std::thread commit_thread_;
};

}  // namespace pyscheduler::detail
