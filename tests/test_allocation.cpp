// At most one heap allocation per queued item: the task node, with the future's
// shared state and result storage in the same block (std::future: the promise's two
// allocations carved out of it; pyscheduler::Future: its state at the block's head,
// and the block carved from a slab). Counted by replacing the global operator new in
// this test binary.
#include <atomic>
#include <cstdlib>
#include <future>
#include <memory>
#include <new>
#include <string>
#include <type_traits>

#include "test_support.hpp"

// The replacements below pair operator new with std::free on purpose (both sides are
// ours); GCC cannot see that and warns.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace {
thread_local bool counting = false;
thread_local std::size_t allocations = 0;
thread_local std::size_t first_size = 0;  // of the first allocation counted

void count(std::size_t size) noexcept {
    if (!counting) return;
    if (allocations++ == 0) first_size = size;
}
}  // namespace

void* operator new(std::size_t size) {
    count(size);
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t align) {
    count(size);
    std::size_t a = static_cast<std::size_t>(align);
    if (void* p = std::aligned_alloc(a, (size + a - 1) / a * a)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace pyscheduler::test {
namespace {

template <class R, class Handler, class Callback>
double allocations_per_item(Handler& h, Callback cb, int items) {
    std::vector<typename Handler::template future<R>> futures;
    futures.reserve(items);
    counting = true;
    allocations = 0;
    for (int i = 0; i < items; ++i) futures.push_back(h.queue_invoke([i] { return i; }, cb));
    const std::size_t counted = allocations;
    counting = false;
    for (auto& f : futures) f.get();
    return static_cast<double>(counted) / items;
}

// The MPMC queue allocates a block of slots now and then (amortised: 1 per 32 items
// at most); everything else must be the one node per item.
constexpr double kBudget = 1.0 + 1.0 / 32 + 0.01;

TEST(Allocation, OneAllocationPerItemForAnIntResult) {
    auto h = load("identity", 64, 4);
    EXPECT_LE(allocations_per_item<int>(h, cast_to<int>(), 20000), kBudget);
}

TEST(Allocation, OneAllocationPerItemForAVoidResult) {
    auto h = load("identity", 64, 4);
    EXPECT_LE(allocations_per_item<void>(h, [](py::object) {}, 20000), kBudget);
}

TEST(Allocation, OneAllocationPerItemForAStringResult) {
    auto h = load("identity", 64, 4);
    EXPECT_LE(allocations_per_item<std::string>(h, [](py::object) { return std::string(); }, 20000), kBudget);
}

// pyscheduler::Future items are carved from 16 KiB slabs (block_pool.hpp): one
// allocation per 64 items of up to 256 bytes, and the queue's.
constexpr double kSlabBudget = 1.0 / 64 + 1.0 / 32 + 0.01;

TEST(Allocation, LightweightFutureItemsComeFromSlabs) {
    auto h = load<LightweightFuturePolicy>("identity", 64, 4);
    EXPECT_LE(allocations_per_item<int>(h, cast_to<int>(), 20000), kSlabBudget);
    EXPECT_LE(allocations_per_item<void>(h, [](py::object) {}, 20000), kSlabBudget);
    EXPECT_LE(allocations_per_item<std::string>(h, [](py::object) { return std::string(); }, 20000), kSlabBudget);
}

/// Bytes of the block that queueing one item allocates (the first allocation: the
/// block is made before the item is queued).
template <class Handler>
std::size_t block_bytes(Handler& h, const ItemOptions& item) {
    counting = true;
    allocations = 0;
    auto f = h.queue_invoke(item, [] { return 1; }, cast_to<int>());
    counting = false;
    EXPECT_GE(allocations, 1u);
    f.get();
    return first_size;
}

/// A stateless allocator that adds up what a std::promise asks of it, aligned as the
/// item's arena aligns it.
thread_local std::size_t promise_bytes = 0;
template <class T>
struct SizingAllocator {
    using value_type = T;
    SizingAllocator() = default;
    template <class U>
    SizingAllocator(const SizingAllocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        promise_bytes = detail::align_up(promise_bytes, alignof(T)) + n * sizeof(T);
        return std::allocator<T>().allocate(n);
    }
    void deallocate(T* p, std::size_t n) noexcept { std::allocator<T>().deallocate(p, n); }
    template <class U>
    bool operator==(const SizingAllocator<U>&) const noexcept {
        return true;
    }
};

template <class R>
std::size_t stateless_promise_bytes() {
    promise_bytes = 0;
    { std::promise<R> p(std::allocator_arg, SizingAllocator<char>()); }
    return promise_bytes;
}

// The std::future item's arena is exactly what the promise's two allocations take
// with an allocator that holds nothing: the arena's allocator keeps no block pointer
// in them (16 bytes an item; it finds the block from the pointer instead).
TEST(Allocation, StdFutureArenaHoldsNoAllocatorState) {
    static_assert(std::is_empty_v<detail::ArenaAllocator<char, int>>);
    EXPECT_EQ(detail::promise_arena_bytes<int>(), stateless_promise_bytes<int>());
    EXPECT_EQ(detail::promise_arena_bytes<void>(), stateless_promise_bytes<void>());
    EXPECT_EQ(detail::promise_arena_bytes<std::string>(), stateless_promise_bytes<std::string>());
}

// A deadline, a group or a handler that stamps its items (queue_timeout,
// measure_latency) add detail::ItemExtras to the item's block; a plain item has none.
TEST(Allocation, OnlyItemsWithADeadlineOrGroupOrStampingHandlerCarryExtras) {
    auto h = load("identity", 64, 4);
    block_bytes(h, ItemOptions{});  // the thread's first item also makes what the thread keeps
    const std::size_t plain = block_bytes(h, ItemOptions{});
    const std::size_t extras = sizeof(detail::ItemExtras);
    EXPECT_EQ(block_bytes(h, ItemOptions{.priority = 3}), plain);
    EXPECT_EQ(block_bytes(h, ItemOptions{.deadline = std::chrono::steady_clock::now() + std::chrono::hours(1)}),
              plain + extras);
    Group group;
    EXPECT_EQ(block_bytes(h, ItemOptions{.group = &group}), plain + extras);
    HandlerOptions timed;
    timed.queue_timeout = std::chrono::hours(1);
    auto t = load("identity", timed);
    EXPECT_EQ(block_bytes(t, ItemOptions{}), plain + extras);
    HandlerOptions measured;
    measured.measure_latency = true;
    auto m = load("identity", measured);
    EXPECT_EQ(block_bytes(m, ItemOptions{}), plain + extras);
    EXPECT_EQ(m.get_queue_stats().item_seconds.count, 1u);  // the stamp was read
}

}  // namespace
}  // namespace pyscheduler::test
