// pyscheduler/options.hpp - per-handler configuration.
#pragma once

#include <chrono>
#include <cstddef>

namespace pyscheduler {

class Group;  // pyscheduler/group.hpp

/// Which interpreter a handler's Python function lives in.
enum class InterpreterKind {
    Main,    ///< the process's main interpreter, shared by every Main handler (one GIL)
    OwnGil,  ///< a sub-interpreter of its own with its own GIL (CPython >= 3.12): runs in
             ///< parallel with the others; extension modules without sub-interpreter
             ///< support (numpy...) cannot be imported there
    Process, ///< a child process of its own (Linux), running the embedded environment's
             ///< python: any module (numpy, torch) runs in parallel, and a crash of the
             ///< function fails its batch (WorkerLost) instead of the host
};

/// Which of the items waiting to be committed a handler takes next, among those of
/// equal priority (ItemOptions::priority; higher priorities always go first).
enum class Order {
    Fifo,  ///< oldest first (arrival order)
    Lifo,  ///< newest first: in a task graph, the items made ready by the latest results
           ///< run first, so final results appear early instead of after every
           ///< intermediate one (smqsched's rule)
};

/// How an `InvokeHandler` batches and buffers work. Passed to
/// `PyManager::loadPythonModule(module, function, options)`.
struct HandlerOptions {
    /// Most items handed to the Python function in one call (>= 1).
    std::size_t batch_size = 1;

    /// Committed items may run ahead of execution by up to
    /// `batch_size * prefetch_depth` items per worker (>= 1). Bounds the memory (or GPU
    /// memory) that staged-but-not-yet-executed items hold. A process worker
    /// (InterpreterKind::Process) holds up to three batches more: the calls it sends
    /// to its process while the one before still runs.
    std::size_t prefetch_depth = 1;

    /// Zero: purely opportunistic batching - the executor takes whatever is ready,
    /// up to `batch_size`, and never waits for more. Non-zero: once an item is ready,
    /// the executor waits at most this long for the batch to fill.
    std::chrono::microseconds max_batch_delay{0};

    /// Zero: the queue is unbounded. Otherwise at most this many items wait to be
    /// committed, and `queue_invoke` blocks until there is room.
    std::size_t queue_capacity = 0;

    /// InterpreterKind::OwnGil: the module is imported in a new sub-interpreter with
    /// its own GIL (sys.path copied from the main interpreter), the handler's threads
    /// run in it, and it ends when the handler is destroyed. Python objects never
    /// cross interpreters: commit results and callback arguments are objects of the
    /// handler's interpreter.
    InterpreterKind interpreter = InterpreterKind::Main;

    /// Executors serving this handler (>= 1, at most 1024). Committed batches go to
    /// whichever worker is free, so one slow batch never holds up items another worker
    /// could run; futures therefore complete in no particular order across workers.
    /// Main: N executor threads on the main interpreter; they share its GIL and overlap
    /// only while the function releases it (numpy/BLAS, I/O, time.sleep, torch).
    /// OwnGil: N sub-interpreters, each with its own GIL, its own import of the module
    /// and its own module globals; pure Python runs truly in parallel.
    /// Process: N child processes, each with its own import of the module.
    std::size_t workers = 1;

    /// InterpreterKind::Process only. Zero: none. Otherwise a call of the function (a
    /// batch, or a synchronous invoke) still running after this long fails with
    /// pyscheduler::Timeout, and its worker process is killed and restarted. A call
    /// sent while the one before it still ran is timed from when that one ended.
    std::chrono::microseconds call_timeout{0};

    /// InterpreterKind::Process only: how many times in a row a worker process that was
    /// lost (WorkerLost, or killed by call_timeout) is restarted, with a backoff of
    /// 50 ms doubling up to 2 s, before the worker gives up: from then on every batch it
    /// takes fails with WorkerLost. A successful call resets the count.
    int max_restarts = 5;

    /// Which waiting item is committed next among equal priorities. Reordering applies
    /// to items not yet committed: items already committed into the prefetch ring (up to
    /// batch_size * prefetch_depth * workers) run in ring order, so that many may run
    /// before a newer or higher-priority item. Fifo with every priority 0 takes the
    /// unordered fast path; Lifo or any nonzero priority makes the commit thread keep
    /// its waiting items in a heap (log n per item).
    Order order = Order::Fifo;

    /// Zero: none. Otherwise an item not handed to Python within this time of being
    /// queued fails with pyscheduler::Timeout instead of running (a dependent item's
    /// time counts from when its inputs were all in). See ItemOptions::deadline.
    std::chrono::microseconds queue_timeout{0};

    /// Records each item's latency, from being queued to the end of the batch it ran
    /// in, in QueueStats::item_seconds (a histogram; Prometheus exposes it as
    /// pyscheduler_item_latency_seconds, see pyscheduler/metrics.hpp). Costs a clock
    /// read per item; items that never reach Python (cancelled, timed out) are not counted.
    bool measure_latency = false;
};

/// Per-item options: `InvokeHandler::submit(ItemOptions{...}, commit, callback, args...)`
/// (and queue_invoke, try_queue_invoke).
struct ItemOptions {
    /// Higher first. Items of equal priority follow HandlerOptions::order. A priority
    /// orders items of one handler only, and only those not yet committed (see
    /// HandlerOptions::order).
    int priority = 0;

    /// An item still waiting when its deadline passes fails with pyscheduler::Timeout
    /// instead of reaching Python. The handler checks when the commit thread takes the
    /// item and again when an executor takes it from the prefetch ring, so the future
    /// fails at the first of those after the deadline (not at the deadline itself); an
    /// item already in Python runs to the end. The default is no deadline. With
    /// HandlerOptions::queue_timeout as well, the earlier of the two applies.
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();

    /// The item joins this group when it is queued (the group's state is shared: the
    /// Group object may go before the item completes). See pyscheduler/group.hpp.
    const Group* group = nullptr;
};

/// What `InvokeHandler::shutdown` does with work that has not run yet.
enum class ShutdownMode {
    Drain,   ///< run everything queued (what the destructor does)
    Cancel,  ///< fail every item not yet handed to Python with pyscheduler::Cancelled
};

}  // namespace pyscheduler
