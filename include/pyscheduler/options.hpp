// pyscheduler/options.hpp - per-handler configuration.
#pragma once

#include <chrono>
#include <cstddef>

namespace pyscheduler {

/// How an `InvokeHandler` batches and buffers work. Passed to
/// `PyManager::loadPythonModule(module, function, options)`.
struct HandlerOptions {
    /// Most items handed to the Python function in one call (>= 1).
    std::size_t batch_size = 1;

    /// Committed items may run ahead of execution by up to
    /// `batch_size * prefetch_depth` items (>= 1). Bounds the memory (or GPU memory)
    /// that staged-but-not-yet-executed items hold.
    std::size_t prefetch_depth = 1;

    /// Zero: purely opportunistic batching - the executor takes whatever is ready,
    /// up to `batch_size`, and never waits for more. Non-zero: once an item is ready,
    /// the executor waits at most this long for the batch to fill.
    std::chrono::microseconds max_batch_delay{0};

    /// Zero: the queue is unbounded. Otherwise at most this many items wait to be
    /// committed, and `queue_invoke` blocks until there is room.
    std::size_t queue_capacity = 0;
};

/// What `InvokeHandler::shutdown` does with work that has not run yet.
enum class ShutdownMode {
    Drain,   ///< run everything queued (what the destructor does)
    Cancel,  ///< fail every item not yet handed to Python with pyscheduler::Cancelled
};

}  // namespace pyscheduler
