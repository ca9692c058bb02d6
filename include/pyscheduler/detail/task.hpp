// pyscheduler/detail/task.hpp - the type-erased node that carries one queued item
// through the pipeline, and the one-allocation block it lives in.
//
// A queued item needs: the user's commit function, callback and arguments, the
// committed value, the callback's result, and a std::promise whose shared state the
// returned std::future points at. std::promise normally allocates twice (shared state
// and result storage). Here everything lives in one heap block:
//
//     [ BlockHeader | arena (promise state + result storage) | Task ]
//
// The promise is built with an allocator that carves its two allocations out of the
// arena. The block is freed when both the pipeline is done with the Task and the
// promise machinery has given its arena allocations back (i.e. the future is gone).
#pragma once

#include <pybind11/pybind11.h>

#include "pyscheduler/detail/config.hpp"
#include "pyscheduler/detail/interpreter.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace pyscheduler::detail {

namespace py = pybind11;

// --- the block and its arena -------------------------------------------------

class BlockHeader {
public:
    BlockHeader(unsigned char* arena, std::uint32_t capacity, void (*free_block)(BlockHeader*)) noexcept
        : arena_(arena), capacity_(capacity), free_block_(free_block) {}

    /// Bump-allocates from the arena; nullptr when it does not fit. Only called while
    /// the promise is constructed, on one thread.
    void* allocate(std::size_t bytes, std::size_t align) noexcept {
        const std::size_t offset = (used_ + align - 1) & ~(align - 1);
        if (offset + bytes > capacity_) return nullptr;
        used_ = static_cast<std::uint32_t>(offset + bytes);
        refs_.fetch_add(1, std::memory_order_relaxed);
        return arena_ + offset;
    }
    bool owns(const void* p) const noexcept {
        auto* b = static_cast<const unsigned char*>(p);
        return b >= arena_ && b < arena_ + capacity_;
    }
    /// Drops one reference: the Task's own, or one arena allocation's.
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) free_block_(this);
    }

private:
    std::atomic<std::uint32_t> refs_{1};  // the Task itself + live arena allocations
    std::uint32_t used_ = 0;
    unsigned char* arena_;
    std::uint32_t capacity_;
    void (*free_block_)(BlockHeader*);
};

/// Allocator handed to std::promise: serves from the block's arena, falls back to
/// the heap for anything that does not fit.
template <class T>
struct ArenaAllocator {
    using value_type = T;
    BlockHeader* block;

    explicit ArenaAllocator(BlockHeader* b) noexcept : block(b) {}
    template <class U>
    ArenaAllocator(const ArenaAllocator<U>& other) noexcept : block(other.block) {}

    T* allocate(std::size_t n) {
        if (void* p = block->allocate(n * sizeof(T), alignof(T))) return static_cast<T*>(p);
        return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(alignof(T))));
    }
    void deallocate(T* p, std::size_t n) noexcept {
        if (block->owns(p)) {
            block->release();
        } else {
            ::operator delete(p, n * sizeof(T), std::align_val_t(alignof(T)));
        }
    }
    template <class U>
    bool operator==(const ArenaAllocator<U>& o) const noexcept { return block == o.block; }
};

// --- the type-erased task ----------------------------------------------------

/// What the pipeline sees of a queued item. The stages call, in order:
///   commit()            commit thread; GIL held iff commit_needs_gil
///   to_python()         executor, GIL held (skipped once the item has failed)
///   deliver(result)     executor, GIL held (skipped once the item has failed)
///   drop_closures()     executor, GIL held: user closures may own Python objects
///   complete()          executor, GIL released: fulfils the promise, frees the block
/// fail() may be called at any step; the item then skips to drop_closures().
class TaskBase {
public:
    explicit TaskBase(bool commit_needs_gil) noexcept : commit_needs_gil(commit_needs_gil) {}
    TaskBase(const TaskBase&) = delete;
    TaskBase& operator=(const TaskBase&) = delete;

    virtual void commit() noexcept = 0;
    virtual py::object to_python() = 0;
    virtual void deliver(py::handle result) noexcept = 0;
    virtual void drop_closures() noexcept = 0;
    virtual void complete() noexcept = 0;

    void fail(std::exception_ptr e) noexcept { error = std::move(e); }
    bool failed() const noexcept { return error != nullptr; }

    const bool commit_needs_gil;
    std::exception_ptr error;
    const std::string* where = nullptr;  // "module.function", for error messages

protected:
    ~TaskBase() = default;
};

template <class T>
inline constexpr bool is_python_object_v = std::is_base_of_v<py::handle, std::remove_cvref_t<T>>;

/// Holds the callback's result between deliver() (GIL held) and complete()
/// (GIL released), so that waking the waiting thread happens outside the GIL.
template <class R>
struct ResultSlot {
    std::optional<R> value;
    bool has() const noexcept { return value.has_value(); }
    void set_promise(std::promise<R>& p) { p.set_value(std::move(*value)); }
};
template <>
struct ResultSlot<void> {
    bool done = false;
    bool has() const noexcept { return done; }
    void set_promise(std::promise<void>& p) { p.set_value(); }
};

template <class R, class Commit, class Callback, class... Args>
class PYSCHEDULER_HIDDEN Task final : public TaskBase {
public:
    using Committed = std::invoke_result_t<Commit&&, Args&&...>;
    static_assert(!std::is_void_v<Committed>,
                  "pyscheduler: the commit function must return the value that is passed to Python");
    static_assert(!std::is_reference_v<Committed>,
                  "pyscheduler: the commit function must return a value, not a reference");

    template <class C, class B, class... A>
    Task(BlockHeader* block, C&& commit, B&& callback, A&&... args)
        : TaskBase(is_python_object_v<Committed>),
          promise_(std::allocator_arg, ArenaAllocator<char>(block)),
          block_(block),
          closures_(std::in_place, std::forward<C>(commit), std::forward<B>(callback),
                    std::tuple<Args...>(std::forward<A>(args)...)) {}

    std::future<R> get_future() { return promise_.get_future(); }

    void commit() noexcept override {
        try {
            closures_->committed.emplace(std::apply(std::move(closures_->commit), std::move(closures_->args)));
        } catch (...) {
            fail(capture_exception("commit function of " + *where));
        }
    }

    py::object to_python() override {
        if constexpr (is_python_object_v<Committed>) {
            return py::reinterpret_borrow<py::object>(*closures_->committed);
        } else {
            py::object obj = py::cast(std::move(*closures_->committed));
            if (!obj) {  // pybind11 reports failed C++ -> Python conversions as a Python error
                const py::error_already_set reason;
                throw py::cast_error("cannot convert the committed value (C++ type " + py::type_id<Committed>() +
                                     ") to a Python object: " + reason.what() +
                                     " (is a type caster header such as <pybind11/stl.h> missing?)");
            }
            return obj;
        }
    }

    void deliver(py::handle result) noexcept override {
        try {
            if constexpr (std::is_void_v<R>) {
                std::invoke(std::move(closures_->callback), py::reinterpret_borrow<py::object>(result));
                result_.done = true;
            } else {
                result_.value.emplace(
                    std::invoke(std::move(closures_->callback), py::reinterpret_borrow<py::object>(result)));
            }
        } catch (...) {
            fail(capture_exception("callback of " + *where));
        }
    }

    void drop_closures() noexcept override { closures_.reset(); }

    void complete() noexcept override {
        try {
            if (error) {
                promise_.set_exception(error);
            } else if (result_.has()) {
                result_.set_promise(promise_);
            } else {
                promise_.set_exception(std::make_exception_ptr(
                    std::logic_error("pyscheduler: internal error: item finished without a result")));
            }
        } catch (...) {  // set_value moved R and R's move threw: the future gets that
            try {
                promise_.set_exception(std::current_exception());
            } catch (...) {
            }
        }
        BlockHeader* block = block_;
        this->~Task();
        block->release();
    }

private:
    struct Closures {
        template <class C, class B>
        Closures(C&& c, B&& b, std::tuple<Args...>&& a)
            : commit(std::forward<C>(c)), callback(std::forward<B>(b)), args(std::move(a)) {}
        Commit commit;
        Callback callback;
        std::tuple<Args...> args;
        std::optional<Committed> committed;
    };

    std::promise<R> promise_;
    BlockHeader* block_;
    std::optional<Closures> closures_;
    ResultSlot<R> result_;
};

/// Bytes of arena that hold a std::promise<R>'s shared state and result storage.
/// Sized for libstdc++ (checked by tests/test_allocation.cpp); whatever does not fit
/// falls back to the heap, which is still correct, only slower.
template <class R>
struct arena_bytes {
    static constexpr std::size_t value = 112 + ((sizeof(R) + alignof(R) + 15) & ~std::size_t{15});
};
template <>
struct arena_bytes<void> {
    static constexpr std::size_t value = 112;
};

template <class TaskT, std::size_t ArenaBytes>
struct TaskBlock {
    BlockHeader header;
    alignas(std::max_align_t) unsigned char arena[ArenaBytes];
    alignas(TaskT) unsigned char task[sizeof(TaskT)];

    static void free_block(BlockHeader* h) noexcept { delete reinterpret_cast<TaskBlock*>(h); }
    TaskBlock() noexcept : header(arena, ArenaBytes, &TaskBlock::free_block) {}
};

/// Allocates one block and builds the Task in it. Returns the task and its future.
template <class R, class Commit, class Callback, class... Args, class C, class B, class... A>
std::pair<TaskBase*, std::future<R>> make_task(C&& commit, B&& callback, A&&... args) {
    using TaskT = Task<R, Commit, Callback, Args...>;
    using Block = TaskBlock<TaskT, arena_bytes<R>::value>;
    static_assert(std::is_standard_layout_v<Block>);
    auto* block = new Block();
    TaskT* task;
    try {
        task = ::new (static_cast<void*>(block->task))
            TaskT(&block->header, std::forward<C>(commit), std::forward<B>(callback), std::forward<A>(args)...);
    } catch (...) {
        delete block;
        throw;
    }
    return {task, task->get_future()};
}

}  // namespace pyscheduler::detail
