// pyscheduler/detail/task.hpp - the type-erased node that carries one queued item
// through the pipeline, and the one heap block it lives in.
//
// A queued item needs: the user's commit function, callback and arguments, the
// committed value, the callback's result, and the shared state that the returned
// future points at. Everything lives in one block, whose head depends on the future
// type the policy chose:
//
//   std::future<R>:        [ BlockHeader (16 B) | arena: promise state + result | Task ]
//   pyscheduler::Future<R>: [ FutureState<R>                                     | Task ]
//
// std::promise normally allocates twice (shared state and result storage); here it
// is built with an allocator that carves both out of the arena. The arena's size, and
// where in it each allocation goes, are measured once per result type R (by building
// one promise with the same allocator type in "measure" mode), so it fits exactly
// with any standard library; the allocator itself holds nothing. The block
// is freed when the pipeline is done with the Task and the future side has let go
// of the shared state.
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <chrono>
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

#include "pyscheduler/detail/config.hpp"
#include "pyscheduler/detail/dependency.hpp"
#include "pyscheduler/detail/interpreter.hpp"
#include "pyscheduler/errors.hpp"
#include "pyscheduler/future.hpp"
#include "pyscheduler/gil_safe.hpp"
#include "pyscheduler/group.hpp"

namespace pyscheduler::detail {

namespace py = pybind11;

// --- the block and its arena -------------------------------------------------

class alignas(16) BlockHeader {
public:
    /// `measure`: the probe of promise_arena_bytes, where reserve() records the arena
    /// bytes the promise's allocations would take (they go to the heap).
    explicit BlockHeader(std::uint32_t block_align, bool measure = false) noexcept
        : measuring_(measure ? 1 : 0), align_(block_align) {}

    bool measuring() const noexcept { return measuring_ != 0; }

    /// Measure mode: the offset in the arena where `bytes` aligned to `align` go.
    std::size_t reserve(std::size_t bytes, std::size_t align) noexcept {
        const std::size_t offset = align_up(wanted_, align);
        wanted_ = static_cast<std::uint32_t>(offset + bytes);
        return offset;
    }
    std::size_t wanted() const noexcept { return wanted_; }

    /// The arena's bytes at `offset`, with a reference to the block.
    void* place(std::size_t offset) noexcept {
        refs_.fetch_add(1, std::memory_order_relaxed);
        return arena() + offset;
    }
    /// The block whose arena holds `p` at `offset`.
    static BlockHeader* of(void* p, std::size_t offset) noexcept {
        return reinterpret_cast<BlockHeader*>(static_cast<unsigned char*>(p) - offset - sizeof(BlockHeader));
    }

    /// Drops one reference: the Task's own, or one arena allocation's.
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            const std::uint32_t align = align_;
            this->~BlockHeader();
            free_block(this, align);
        }
    }

private:
    unsigned char* arena() noexcept { return reinterpret_cast<unsigned char*>(this) + sizeof(BlockHeader); }

    std::atomic<std::uint32_t> refs_{1};  // the Task itself + live arena allocations
    std::uint32_t wanted_ = 0;            // measure mode: arena bytes asked for so far
    std::uint32_t measuring_;
    std::uint32_t align_;  // alignment the block was allocated with (for free_block)
};
static_assert(sizeof(BlockHeader) == 16);

/// The block whose std::promise this thread is building (set around its
/// construction, the only time the promise allocates), or the measuring probe.
inline thread_local BlockHeader* building_block = nullptr;

/// Sets building_block for one scope.
class BuildingBlock {
public:
    explicit BuildingBlock(BlockHeader* b) noexcept : before_(std::exchange(building_block, b)) {}
    ~BuildingBlock() { building_block = before_; }
    BuildingBlock(const BuildingBlock&) = delete;
    BuildingBlock& operator=(const BuildingBlock&) = delete;

private:
    BlockHeader* before_;
};

/// Where a std::promise<Key>'s allocation of type T goes: `bytes` at `offset` in its
/// block's arena, or (bytes == 0) the heap. Set when promise_arena_bytes<Key>
/// measures: each type the promise allocates exactly once, with an alignment the
/// arena can give, gets its place. Hidden, like the allocator and the measurement:
/// each shared object that includes pyscheduler measures for itself, and a block
/// is always freed by the code that made it (the promise's allocations are let go
/// through their virtual destroy functions).
template <class T, class Key>
struct PYSCHEDULER_HIDDEN ArenaPlace {
    inline static std::size_t offset = 0;
    inline static std::size_t bytes = 0;
    inline static const BlockHeader* measured_by = nullptr;  // the probe that placed it
};

/// Allocator handed to std::promise<Key>: serves its allocations from the block's
/// arena (ArenaPlace), the heap for anything else. Stateless on purpose: the promise
/// keeps a copy in both of its allocations, which an empty class costs nothing
/// (empty-base optimisation) and a block pointer 8 bytes each. allocate() finds the
/// block through building_block; deallocate(), on whichever thread lets go of the
/// state, from the pointer and the type's offset.
template <class T, class Key>
struct PYSCHEDULER_HIDDEN ArenaAllocator {
    using value_type = T;
    using Place = ArenaPlace<T, Key>;

    ArenaAllocator() noexcept = default;
    template <class U>
    ArenaAllocator(const ArenaAllocator<U, Key>&) noexcept {}

    T* allocate(std::size_t n) {
        BlockHeader* const block = building_block;
        const std::size_t bytes = n * sizeof(T);
        if (block != nullptr && block->measuring()) {
            const std::size_t offset = block->reserve(bytes, alignof(T));
            const bool again = std::exchange(Place::measured_by, block) == block;  // a second one: the heap
            Place::offset = offset;
            Place::bytes = !again && alignof(T) <= alignof(BlockHeader) ? bytes : 0;
        } else if (in_arena(bytes)) {
            if (block == nullptr) {
                throw std::logic_error("pyscheduler: internal error: a promise allocated outside its construction");
            }
            return static_cast<T*>(block->place(Place::offset));
        }
        return static_cast<T*>(::operator new(bytes, std::align_val_t(alignof(T))));
    }
    void deallocate(T* p, std::size_t n) noexcept {
        const std::size_t bytes = n * sizeof(T);
        const BlockHeader* const block = building_block;
        if (in_arena(bytes) && !(block != nullptr && block->measuring())) {
            BlockHeader::of(p, Place::offset)->release();
        } else {
            ::operator delete(p, bytes, std::align_val_t(alignof(T)));
        }
    }
    template <class U>
    bool operator==(const ArenaAllocator<U, Key>&) const noexcept {
        return true;
    }

private:
    static bool in_arena(std::size_t bytes) noexcept { return Place::bytes != 0 && bytes <= Place::bytes; }
};

/// Arena bytes a std::promise<R> built with ArenaAllocator takes: measured once, by
/// building one promise on a probe in measure mode (which also places each of its
/// allocations: ArenaPlace).
template <class R>
PYSCHEDULER_HIDDEN std::size_t promise_arena_bytes() {
    static const std::size_t bytes = [] {
        BlockHeader probe(16, true);
        const BuildingBlock measuring(&probe);
        { std::promise<R> p(std::allocator_arg, ArenaAllocator<char, R>()); }
        return probe.wanted();
    }();
    return bytes;
}

// --- the producer side of each future type -------------------------------------

/// How an item makes and fulfils a future of type F, and the head of its block
/// (built first, at the block's start; the Task follows). set_value/set_exception
/// hand it the result; finish(head), once the Task is destroyed, makes sure the
/// future sees the result and drops the Task's reference to the block.
template <class F>
struct Completion;

template <class F>
inline constexpr bool is_supported_future_v = false;
template <class R>
inline constexpr bool is_supported_future_v<std::future<R>> = true;
template <class R>
inline constexpr bool is_supported_future_v<Future<R>> = true;

template <class R>
struct Completion<std::future<R>> {
    using value_type = R;
    using Head = BlockHeader;
    static std::size_t head_bytes() { return sizeof(BlockHeader) + promise_arena_bytes<R>(); }
    static void* allocate(std::size_t size, std::size_t align, BlockTag& tag) {
        tag = align;
        return allocate_block(size, align);
    }
    static Head* make_head(void* memory, BlockTag tag) noexcept {
        return ::new (memory) BlockHeader(static_cast<std::uint32_t>(tag));
    }

    explicit Completion(Head* head) : promise(make_promise(head)) {}
    static std::promise<R> make_promise(Head* head) {
        const BuildingBlock building(head);
        return std::promise<R>(std::allocator_arg, ArenaAllocator<char, R>());
    }
    std::future<R> get_future(Head*) { return promise.get_future(); }
    template <class... V>
    void set_value(Head*, V&&... v) {  // throws what R's move constructor throws
        promise.set_value(std::forward<V>(v)...);
    }
    void set_exception(Head*, std::exception_ptr e) { promise.set_exception(std::move(e)); }
    /// After the Task has ended: drops its reference to the block.
    static void finish(Head* head) noexcept { head->release(); }

    std::promise<R> promise;
};

/// Holds nothing: the state is the block's head, which the Task finds from its own
/// address (a pointer to it would cost 8 bytes an item).
template <class R>
struct Completion<Future<R>> {
    using value_type = R;
    using Head = FutureState<R>;
    static std::size_t head_bytes() noexcept { return sizeof(Head); }
    /// From the calling thread's slab (block_pool.hpp).
    static void* allocate(std::size_t size, std::size_t align, BlockTag& tag) {
        return allocate_pooled_block(size, align, tag);
    }
    static Head* make_head(void* memory, BlockTag tag) noexcept { return ::new (memory) Head(tag); }

    explicit Completion(Head*) noexcept {}
    Future<R> get_future(Head* state) noexcept { return state->make_first_future(); }
    /// Stored only: the future sees the result at finish().
    template <class... V>
    void set_value(Head* state, V&&... v) noexcept {
        state->store_value(std::forward<V>(v)...);
    }
    void set_exception(Head* state, std::exception_ptr e) noexcept { state->store_exception(std::move(e)); }
    /// After the Task has ended: publishes the result and drops the Task's reference,
    /// in one locked instruction (FutureState).
    static void finish(Head* state) noexcept { state->publish_and_release(); }
};

// --- the type-erased task ----------------------------------------------------

/// What only some items carry: a deadline, a group, or the time their handler queued
/// them (HandlerOptions::queue_timeout and measure_latency stamp every item). Kept at
/// the end of the item's block, and only there when make_task is asked for it, so
/// that an item without them is 24 bytes smaller and the executor's per-item checks
/// (fail_unwanted) read one pointer of the line they touch anyway.
struct ItemExtras {
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();  // none
    std::chrono::steady_clock::time_point queued_at{};  // stamped when queued (Pipeline::stamp_queued)
    GroupState* group = nullptr;    // ItemOptions::group's state, with a reference
    std::uint32_t group_index = 0;  // in `group`
};

/// What the pipeline sees of a queued item. The stages call, in order:
///   commit()            commit thread; GIL held iff commit_needs_gil()
///   to_python()         executor, GIL held (skipped once the item has failed)
///   deliver(result)     executor, GIL held (skipped once the item has failed)
///   drop_closures()     executor, GIL held: user closures may own Python objects
///                       (through release_closures(), which skips trivial ones)
///   complete()          executor, GIL released: fulfils the promise, frees the block,
///                       and returns what to tell the item's group (GroupState::report)
/// fail() may be called at any step; the item then skips to drop_closures().
/// `where` ("module.function") only serves error messages.
class TaskBase {
public:
    TaskBase() = default;
    TaskBase(const TaskBase&) = delete;
    TaskBase& operator=(const TaskBase&) = delete;

    virtual bool commit_needs_gil() const noexcept = 0;
    virtual void commit(const std::string& where) noexcept = 0;
    virtual py::object to_python() = 0;
    virtual void deliver(py::handle result, const std::string& where) noexcept = 0;
    virtual void drop_closures() noexcept = 0;
    virtual GroupState::Report complete() noexcept = 0;

    /// drop_closures() where destroying the closures does something; trivially
    /// destructible ones (lambdas that capture plain values) are left to the block,
    /// which saves the executor a virtual call an item.
    void release_closures() noexcept {
        if (closures_have_destructor) drop_closures();
    }

    void fail(std::exception_ptr e) noexcept { error = std::move(e); }
    bool failed() const noexcept { return error != nullptr; }

    /// fail() with the exception `make()` returns (one whose message is built now); if
    /// building it throws (out of memory), with that exception instead.
    template <class Make>
    void fail_with(Make&& make) noexcept {
        try {
            fail(make());
        } catch (...) {
            fail(std::current_exception());
        }
    }

    /// ItemOptions::group's state (with a reference; told in complete()), or null.
    GroupState* group() const noexcept { return extras ? extras->group : nullptr; }

    std::exception_ptr error;
    ItemExtras* extras = nullptr;    // in the item's block, where make_task was asked for it
    int priority = 0;                // ItemOptions::priority
    bool stream_step = false;        // a StreamBase (stream.hpp): executors advance it instead of calling Python
    bool closures_have_destructor = true;  // see release_closures()

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
    template <class C, class H>
    void fulfil(C& completion, H* head) {
        completion.set_value(head, std::move(*value));
    }
};
template <>
struct ResultSlot<void> {
    bool done = false;
    bool has() const noexcept { return done; }
    template <class C, class H>
    void fulfil(C& completion, H* head) {
        completion.set_value(head);
    }
};

/// How a group member ended, from its error (none: a value).
inline GroupState::Outcome outcome_of(const std::exception_ptr& error) noexcept {
    if (!error) return GroupState::Outcome::Value;
    try {
        std::rethrow_exception(error);
    } catch (const Cancelled&) {
        return GroupState::Outcome::Cancelled;
    } catch (...) {
        return GroupState::Outcome::Failed;
    }
}

/// One queued item whose result goes to a future of type F.
template <class F, class Commit, class Callback, class... Args>
class PYSCHEDULER_HIDDEN Task final : public TaskBase {
    using R = typename Completion<F>::value_type;
    using Head = typename Completion<F>::Head;

public:
    using Committed = std::invoke_result_t<Commit&&, passed_t<Args>...>;
    static constexpr std::size_t kInputs = input_count_v<Args...>;
    static_assert(kInputs <= 64, "pyscheduler: at most 64 of an item's arguments may be futures");
    static_assert(!std::is_void_v<Committed>,
                  "pyscheduler: the commit function must return the value that is passed to Python");
    static_assert(!std::is_reference_v<Committed>,
                  "pyscheduler: the commit function must return a value, not a reference");
    static_assert(is_python_object_v<Committed> || !owns_python_references_v<Committed>,
                  "pyscheduler: the commit function returns a type that holds Python objects without being one "
                  "(a container of pybind11 objects...). Such commits run without the GIL. Return one "
                  "pybind11 object (e.g. a py::list; such commits run with the GIL) or a C++ value.");

    template <class C, class B, class... A>
    Task(Head* head, C&& commit, B&& callback, A&&... args)
        : completion_(head),
          closures_(std::in_place, std::forward<C>(commit), std::forward<B>(callback),
                    std::tuple<Args...>(std::forward<A>(args)...)) {
        closures_have_destructor = !std::is_trivially_destructible_v<Closures>;
    }

    /// Offset of the Task from its block's start (the head).
    static std::size_t offset_in_block() { return align_up(Completion<F>::head_bytes(), alignof(Task)); }

    /// Once, before the item is queued; `block` is this Task's head, which make_task
    /// has at hand (head() would compute it again on queue_invoke's per-item path).
    F get_future(Head* block) { return completion_.get_future(block); }

    bool commit_needs_gil() const noexcept override { return is_python_object_v<Committed>; }

    void commit(const std::string& where) noexcept override {
        if constexpr (kInputs > 0) {
            if (fail_on_failed_input(where)) return;
        }
        try {
            closures_->committed.emplace(std::apply(
                [this](Args&... a) { return std::invoke(std::move(closures_->commit), pass_argument(a)...); },
                closures_->args));
        } catch (...) {
            fail(capture_exception("commit function of " + where));
        }
    }

    /// Bit i set: the i-th input (in argument order, counting inputs only) is not ready.
    std::uint64_t pending_inputs() const noexcept {
        std::uint64_t mask = 0;
        std::size_t i = 0;
        std::apply([&](const Args&... a) { (note_pending(a, mask, i), ...); }, closures_->args);
        return mask;
    }

    /// Adds the Links of `w` (made with one per bit of `mask`) to those inputs.
    void wait_for_inputs(std::uint64_t mask, Waiting& w) noexcept {
        std::size_t i = 0;
        std::size_t link = 0;
        std::apply([&](const Args&... a) { (add_link(a, mask, i, link, w), ...); }, closures_->args);
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

    void deliver(py::handle result, const std::string& where) noexcept override {
        try {
            if constexpr (std::is_void_v<R>) {
                std::invoke(std::move(closures_->callback), py::reinterpret_borrow<py::object>(result));
                result_.done = true;
            } else {
                result_.value.emplace(
                    std::invoke(std::move(closures_->callback), py::reinterpret_borrow<py::object>(result)));
            }
        } catch (...) {
            fail(capture_exception("callback of " + where));
        }
    }

    void drop_closures() noexcept override { closures_.reset(); }

    GroupState::Report complete() noexcept override {
        GroupState* const g = group();
        const GroupState::Report report{g, g ? extras->group_index : 0,
                                        g ? outcome_of(error) : GroupState::Outcome::Value};
        Head* const block = head();
        try {
            if (error) {
                completion_.set_exception(block, std::move(error));  // the future holds the only reference
            } else if (result_.has()) {
                result_.fulfil(completion_, block);
            } else {
                completion_.set_exception(block, std::make_exception_ptr(std::logic_error(
                                                     "pyscheduler: internal error: item finished without a result")));
            }
        } catch (...) {  // set_value moved R and R's move threw: the future gets that
            try {
                completion_.set_exception(block, std::current_exception());
            } catch (...) {
            }
        }
        this->~Task();
        Completion<F>::finish(block);
        return report;  // told after the future is fulfilled
    }

private:
    template <class A>
    static void note_pending(const A& a, std::uint64_t& mask, std::size_t& i) noexcept {
        if constexpr (is_input_v<A>) {
            if (!FutureAccess::state(a)->is_ready()) mask |= std::uint64_t{1} << i;
            ++i;
        }
    }
    template <class A>
    static void add_link(const A& a, std::uint64_t mask, std::size_t& i, std::size_t& link, Waiting& w) noexcept {
        if constexpr (is_input_v<A>) {
            if (mask & (std::uint64_t{1} << i)) FutureAccess::state(a)->on_ready(w.link(link++));
            ++i;
        }
    }

    /// Commit thread: fails the item with DependencyFailed when an input failed.
    bool fail_on_failed_input(const std::string& where) noexcept {
        return std::apply(
            [&](const Args&... a) {
                std::size_t position = 0;
                return (fail_if_failed(a, position++, where) || ...);
            },
            closures_->args);
    }
    template <class A>
    bool fail_if_failed(const A& a, std::size_t position, const std::string& where) noexcept {
        if constexpr (is_input_v<A>) {
            const std::exception_ptr& e = FutureAccess::state(a)->error();
            if (!e) return false;
            fail_with([&] {
                return std::make_exception_ptr(DependencyFailed(where + ": argument " + std::to_string(position) +
                                                                " (an input) failed, so this item did not run: " +
                                                                describe(e)));
            });
            return true;
        } else {
            return false;
        }
    }

    struct Closures {
        template <class C, class B>
        Closures(C&& c, B&& b, std::tuple<Args...>&& a)
            : commit(std::forward<C>(c)), callback(std::forward<B>(b)), args(std::move(a)) {}
        [[no_unique_address]] Commit commit;
        [[no_unique_address]] Callback callback;
        [[no_unique_address]] std::tuple<Args...> args;
        std::optional<Committed> committed;
    };

    /// The block's head, at offset_in_block() before the Task.
    Head* head() noexcept { return reinterpret_cast<Head*>(reinterpret_cast<unsigned char*>(this) - offset_in_block()); }

    [[no_unique_address]] Completion<F> completion_;
    std::optional<Closures> closures_;
    ResultSlot<R> result_;
};

/// Allocates one block, builds its head and the Task in it, and with `with_extras`
/// an ItemExtras after the Task (task->extras). Returns the task and its future (of
/// type F).
template <class F, class Commit, class Callback, class... Args, class C, class B, class... A>
std::pair<Task<F, Commit, Callback, Args...>*, F> make_task(bool with_extras, C&& commit, B&& callback,
                                                            A&&... args) {
    using TaskT = Task<F, Commit, Callback, Args...>;
    using Head = typename Completion<F>::Head;
    const std::size_t offset = TaskT::offset_in_block();
    const std::size_t extras_offset = align_up(offset + sizeof(TaskT), alignof(ItemExtras));
    const std::size_t size = with_extras ? extras_offset + sizeof(ItemExtras) : offset + sizeof(TaskT);
    const std::size_t align = std::max({std::size_t{16}, alignof(TaskT), alignof(Head)});
    BlockTag tag;
    void* memory = Completion<F>::allocate(size, align, tag);
    Head* head = Completion<F>::make_head(memory, tag);
    TaskT* task;
    try {
        task = ::new (static_cast<unsigned char*>(memory) + offset)
            TaskT(head, std::forward<C>(commit), std::forward<B>(callback), std::forward<A>(args)...);
    } catch (...) {
        head->release();  // the Task's reference; arena allocations were given back by unwinding
        throw;
    }
    if (with_extras) task->extras = ::new (static_cast<unsigned char*>(memory) + extras_offset) ItemExtras;
    return {task, task->get_future(head)};
}

}  // namespace pyscheduler::detail
