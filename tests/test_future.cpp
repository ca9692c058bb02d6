// pyscheduler::Future<R> on its own (no interpreter): the std::future contract it
// keeps, the lifetime of its shared state, and stress tests of the park/wake
// protocol. Built twice: with the Linux futex, and with
// PYSCHEDULER_FUTURE_PORTABLE_WAIT (the mutex + condition variable fallback).
#include <gtest/gtest.h>
#include <pyscheduler/future.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace pyscheduler::test {
namespace {

using std::chrono::milliseconds;
using Steady = std::chrono::steady_clock;

constexpr auto kNoHang = std::chrono::seconds(60);
constexpr auto kLostWakeUp = std::chrono::seconds(5);

/// The producer's side of a state: fulfils it once and lets go of it. `fused`: as a
/// queued item does (store the result, then publish it and drop the reference in one
/// instruction); otherwise as a stream does (set, then release()).
template <class R>
struct Producer {
    detail::FutureState<R>* state;
    bool fused = false;
    void set_value(auto&&... v) {
        if (fused) {
            state->store_value(std::forward<decltype(v)>(v)...);
            state->publish_and_release();
        } else {
            state->set_value(std::forward<decltype(v)>(v)...);
            state->release();
        }
    }
    void set_exception(std::exception_ptr e) {
        if (fused) {
            state->store_exception(std::move(e));
            state->publish_and_release();
        } else {
            state->set_exception(std::move(e));
            state->release();
        }
    }
};

/// A state in a block of its own (as the pipeline makes them), its producer and its future.
template <class R>
std::pair<Producer<R>, Future<R>> make_future(bool fused = false) {
    constexpr std::size_t align = alignof(detail::FutureState<R>) > 16 ? alignof(detail::FutureState<R>) : 16;
    void* memory = detail::allocate_block(sizeof(detail::FutureState<R>), align);
    auto* state = ::new (memory) detail::FutureState<R>(align);
    return {Producer<R>{state, fused}, state->make_future()};
}

/// Counts live instances; its move constructor throws when asked to.
struct Counted {
    static inline std::atomic<int> live{0};
    int value;
    bool throw_on_move = false;
    explicit Counted(int v, bool t = false) : value(v), throw_on_move(t) { ++live; }
    Counted(Counted&& o) : value(o.value), throw_on_move(o.throw_on_move) {
        if (throw_on_move) throw std::runtime_error("Counted: move refused");
        ++live;
    }
    Counted(const Counted&) = delete;
    ~Counted() { --live; }
};

/// Expects `f()` to throw std::future_error with no_state.
template <class F>
void expect_no_state(F&& f) {
    try {
        f();
        ADD_FAILURE() << "did not throw";
    } catch (const std::future_error& e) {
        EXPECT_EQ(e.code(), std::future_errc::no_state);
    }
}

/// Busy-waits a pseudo-random while (mostly under a microsecond, one time in four up
/// to some tens): puts the setter anywhere in the waiter's spin, park or sleep.
void jitter(std::uint32_t& seed) {
    seed ^= seed << 13;
    seed ^= seed >> 17;
    seed ^= seed << 5;
    const std::uint32_t n = seed % 4 == 0 ? seed % 32768 : seed % 1024;
    for (std::uint32_t i = 0; i < n; ++i) std::atomic_signal_fence(std::memory_order_seq_cst);
}

TEST(Future, ValueSetBeforeGet) {
    auto [producer, future] = make_future<int>();
    EXPECT_TRUE(future.valid());
    EXPECT_FALSE(future.is_ready());
    producer.set_value(42);
    EXPECT_TRUE(future.is_ready());
    EXPECT_EQ(future.wait_for(milliseconds(0)), std::future_status::ready);
    EXPECT_EQ(future.get(), 42);
    EXPECT_FALSE(future.valid());
}

TEST(Future, GetWaitsForAValueSetLater) {
    auto [producer, future] = make_future<std::string>();
    std::thread setter([p = producer] {
        std::this_thread::sleep_for(milliseconds(50));  // long enough that get() has parked
        Producer<std::string>(p).set_value("late");
    });
    EXPECT_EQ(future.get(), "late");
    setter.join();
}

TEST(Future, VoidFuture) {
    auto [producer, future] = make_future<void>();
    producer.set_value();
    future.get();
    EXPECT_FALSE(future.valid());
}

TEST(Future, ExceptionReachesGetAndInvalidates) {
    auto [producer, future] = make_future<int>();
    producer.set_exception(std::make_exception_ptr(std::runtime_error("boom")));
    EXPECT_TRUE(future.is_ready());
    try {
        future.get();
        ADD_FAILURE() << "did not throw";
    } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "boom");
    }
    EXPECT_FALSE(future.valid());
}

TEST(Future, VoidFutureException) {
    auto [producer, future] = make_future<void>();
    producer.set_exception(std::make_exception_ptr(std::logic_error("void boom")));
    EXPECT_THROW(future.get(), std::logic_error);
}

TEST(Future, MoveOnlyValue) {
    auto [producer, future] = make_future<std::unique_ptr<int>>();
    producer.set_value(std::make_unique<int>(7));
    auto p = future.get();
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(*p, 7);
}

TEST(Future, ValueWhoseMoveThrowsBecomesTheException) {
    {
        auto [producer, future] = make_future<Counted>();
        producer.set_value(Counted(1, /*throw_on_move=*/true));
        try {
            future.get();
            ADD_FAILURE() << "did not throw";
        } catch (const std::runtime_error& e) {
            EXPECT_STREQ(e.what(), "Counted: move refused");
        }
    }
    EXPECT_EQ(Counted::live.load(), 0);
}

TEST(Future, InvalidFutureThrowsNoState) {
    Future<int> empty;
    EXPECT_FALSE(empty.valid());
    expect_no_state([&] { empty.get(); });
    expect_no_state([&] { empty.wait(); });
    expect_no_state([&] { (void)empty.wait_for(milliseconds(1)); });
    expect_no_state([&] { (void)empty.is_ready(); });

    auto [producer, future] = make_future<int>();
    producer.set_value(1);
    EXPECT_EQ(future.get(), 1);
    expect_no_state([&] { future.get(); });  // get() once, as std::future
}

TEST(Future, MovesTransferTheState) {
    auto [producer, future] = make_future<int>();
    Future<int> moved(std::move(future));
    EXPECT_FALSE(future.valid());  // NOLINT(bugprone-use-after-move): the moved-from state is the point
    EXPECT_TRUE(moved.valid());
    Future<int> assigned;
    assigned = std::move(moved);
    EXPECT_FALSE(moved.valid());  // NOLINT(bugprone-use-after-move)
    producer.set_value(5);
    EXPECT_EQ(assigned.get(), 5);
}

TEST(Future, WaitForTimesOutThenSeesTheValue) {
    auto [producer, future] = make_future<int>();
    const auto t0 = Steady::now();
    EXPECT_EQ(future.wait_for(milliseconds(20)), std::future_status::timeout);
    EXPECT_GE(Steady::now() - t0, milliseconds(20));  // a timeout never ends early
    EXPECT_EQ(future.wait_for(milliseconds(0)), std::future_status::timeout);
    EXPECT_EQ(future.wait_for(milliseconds(-5)), std::future_status::timeout);
    producer.set_value(3);
    EXPECT_EQ(future.wait_for(milliseconds(0)), std::future_status::ready);
    EXPECT_EQ(future.get(), 3);
}

TEST(Future, WaitUntilOnAnotherClock) {
    auto [producer, future] = make_future<int>();
    using System = std::chrono::system_clock;
    EXPECT_EQ(future.wait_until(System::now() - milliseconds(1)), std::future_status::timeout);
    const auto deadline = System::now() + milliseconds(20);
    EXPECT_EQ(future.wait_until(deadline), std::future_status::timeout);
    EXPECT_GE(System::now(), deadline);
    std::thread setter([p = producer] {
        std::this_thread::sleep_for(milliseconds(20));
        Producer<int>(p).set_value(9);
    });
    EXPECT_EQ(future.wait_until(System::now() + kNoHang), std::future_status::ready);
    EXPECT_EQ(future.get(), 9);
    setter.join();
}

TEST(Future, TimeoutsTooLongToAddAreWaitsWithoutOne) {
    auto [producer, future] = make_future<int>();
    std::thread setter([p = producer] {
        std::this_thread::sleep_for(milliseconds(20));
        Producer<int>(p).set_value(4);
    });
    EXPECT_EQ(future.wait_for(std::chrono::hours::max()), std::future_status::ready);
    EXPECT_EQ(future.wait_until(std::chrono::system_clock::time_point::max()), std::future_status::ready);
    EXPECT_EQ(future.wait_for(std::chrono::duration<double>(1e300)), std::future_status::ready);
    EXPECT_EQ(future.get(), 4);
    setter.join();
}

TEST(Future, AbandonedBeforeTheValueDestroysItOnce) {
    for (const bool fused : {false, true}) {
        {
            auto [producer, future] = make_future<Counted>(fused);
            { Future<Counted> dropped = std::move(future); }  // the future goes first
            producer.set_value(Counted(1));
        }
        EXPECT_EQ(Counted::live.load(), 0) << "fused " << fused;
        {
            auto [producer, future] = make_future<Counted>(fused);
            producer.set_value(Counted(2));  // the producer goes first; the value waits in the state
            EXPECT_EQ(Counted::live.load(), 1) << "fused " << fused;
        }
        EXPECT_EQ(Counted::live.load(), 0) << "fused " << fused;  // destroyed with the unread future
    }
}

// An added continuation makes the setter keep the block past its publish (to run it):
// here the continuation drops the only future while the setter runs it, so the setter
// is the last holder and frees the block. ASan sees any access to it after that.
TEST(Future, TheSetterOutlivesAFutureDroppedByItsContinuation) {
    struct DropFuture : detail::Continuation {
        Future<Counted>* future;
        explicit DropFuture(Future<Counted>* f) : future(f) {
            run = [](detail::Continuation* c) noexcept { *static_cast<DropFuture*>(c)->future = Future<Counted>(); };
        }
    };
    for (const bool fused : {false, true}) {
        auto [producer, future] = make_future<Counted>(fused);
        DropFuture drop(&future);
        detail::FutureAccess::state(future)->on_ready(&drop);
        producer.set_value(Counted(3));
        EXPECT_FALSE(future.valid()) << "fused " << fused;
        EXPECT_EQ(Counted::live.load(), 0) << "fused " << fused;
    }
}

TEST(Future, MoveAssignmentReleasesTheOldState) {
    auto [p1, f1] = make_future<Counted>();
    auto [p2, f2] = make_future<Counted>();
    p1.set_value(Counted(1));
    p2.set_value(Counted(2));
    EXPECT_EQ(Counted::live.load(), 2);
    f1 = std::move(f2);  // f1's unread value goes with its state
    EXPECT_EQ(Counted::live.load(), 1);
    EXPECT_EQ(f1.get().value, 2);
    EXPECT_EQ(Counted::live.load(), 0);
}

TEST(Future, OverAlignedValue) {
    struct alignas(64) Wide {
        int v;
    };
    auto [producer, future] = make_future<Wide>();
    producer.set_value(Wide{11});
    Wide w = future.get();
    EXPECT_EQ(w.v, 11);
}

// --- how long a waiting thread polls before it parks ------------------------------------

// The rule shared by the pipeline's stages and by threads waiting for results: no
// extra polling until waits were seen; then up to twice their moving average, at most
// the limit; none once the average is above the limit.
TEST(IdleBudget, PollsForTwiceItsShortWaitsAndNotAfterLongOnes) {
    using std::chrono::microseconds;
    detail::BasicIdleBudget<100> budget;
    EXPECT_EQ(budget.poll_for(), Steady::duration::zero()) << "nothing learned yet: park after the fixed polls";
    for (int i = 0; i < 40; ++i) budget.observe(microseconds(20));
    const auto us = [](Steady::duration d) { return std::chrono::duration<double, std::micro>(d).count(); };
    EXPECT_NEAR(us(budget.poll_for()), 40.0, 0.5);
    for (int i = 0; i < 40; ++i) budget.observe(microseconds(80));
    EXPECT_EQ(budget.poll_for(), microseconds(100)) << "twice 80 us, capped at the limit";
    for (int i = 0; i < 40; ++i) budget.observe(milliseconds(1));
    EXPECT_EQ(budget.poll_for(), Steady::duration::zero()) << "waits longer than the limit: park at once";
    budget.observe(microseconds(10));
    EXPECT_EQ(budget.poll_for(), Steady::duration::zero()) << "one short wait does not undo a run of long ones";
}

// --- stress: the park / wake protocol --------------------------------------------------

/// `n` futures of int with their producers, and a setter thread that sets future i
/// to i once the waiter has announced i (then after a random delay), so the set
/// lands before, during and after the waiter's switch to "parked" and its sleep.
class AnnouncedSetter {
public:
    AnnouncedSetter(int n, std::uint32_t seed) {
        for (int i = 0; i < n; ++i) {
            auto [p, f] = make_future<int>(i % 2 == 1);  // both ways of fulfilling a state
            producers_.push_back(p);
            futures.push_back(std::move(f));
        }
        setter_ = std::thread([this, n, seed]() mutable {
            for (int i = 0; i < n; ++i) {
                while (announced_.load(std::memory_order_acquire) < i) std::this_thread::yield();
                jitter(seed);
                producers_[i].set_value(i);
            }
        });
    }
    ~AnnouncedSetter() {
        announce(static_cast<int>(futures.size()));  // lets the setter finish after an early exit
        setter_.join();
    }
    void announce(int i) { announced_.store(i, std::memory_order_release); }

    std::vector<Future<int>> futures;

private:
    std::vector<Producer<int>> producers_;
    std::atomic<int> announced_{-1};
    std::thread setter_;
};

// The setter sets within microseconds of the announcement, so a wait that lasts
// seconds is a lost wake-up.
TEST(FutureStress, SetterRacesTheWaitersPark) {
    constexpr int kRounds = 100000;
    AnnouncedSetter s(kRounds, 12345);
    int wrong = 0;
    for (int i = 0; i < kRounds; ++i) {
        s.announce(i);
        const auto t0 = Steady::now();
        // A timed wait, so that a lost wake-up ends; the value is there by then, so
        // only the time it took tells.
        const bool ready = s.futures[i].wait_for(kLostWakeUp) == std::future_status::ready;
        if (!ready || Steady::now() - t0 >= kLostWakeUp) {
            ADD_FAILURE() << "lost wake-up at " << i;
            break;
        }
        wrong += s.futures[i].get() != i;
    }
    EXPECT_EQ(wrong, 0);
}

// Untimed waits back to back, as a thread going through results waits: each yields
// first (the thread's last wait ended moments ago), and the set lands during the
// yields, as they end, or after the waiter parked (the jitter runs from nothing to
// tens of microseconds). A lost wake-up hangs until the test's timeout.
TEST(FutureStress, UntimedWaitsBackToBackRaceTheSetter) {
    constexpr int kRounds = 100000;
    AnnouncedSetter s(kRounds, 4242);
    int wrong = 0;
    for (int i = 0; i < kRounds; ++i) {
        s.announce(i);
        wrong += s.futures[i].get() != i;
    }
    EXPECT_EQ(wrong, 0);
}

// Timed waits racing the set: whatever wait_for says must be true, and the value
// must arrive.
TEST(FutureStress, TimedWaitsRaceTheSetter) {
    constexpr int kRounds = 20000;
    AnnouncedSetter s(kRounds, 99);
    int lied = 0, wrong = 0;
    for (int i = 0; i < kRounds; ++i) {
        s.announce(i);
        if (s.futures[i].wait_for(std::chrono::microseconds(i % 7)) == std::future_status::ready) {
            lied += !s.futures[i].is_ready();
        }
        wrong += s.futures[i].get() != i;
    }
    EXPECT_EQ(lied, 0);
    EXPECT_EQ(wrong, 0);
}

// Many waiters and setters on distinct futures at once (states share parking buckets
// in the portable build), futures dropped unread by some waiters.
TEST(FutureStress, ManyThreads) {
    constexpr int kWaiters = 4, kSetters = 2, kPerWaiter = 20000;
    std::vector<std::vector<Producer<int>>> producers(kWaiters);
    std::vector<std::vector<Future<int>>> futures(kWaiters);
    for (int w = 0; w < kWaiters; ++w) {
        for (int i = 0; i < kPerWaiter; ++i) {
            auto [p, f] = make_future<int>(i % 2 == 1);
            producers[w].push_back(p);
            futures[w].push_back(std::move(f));
        }
    }
    std::vector<std::thread> threads;
    for (int s = 0; s < kSetters; ++s) {
        threads.emplace_back([&, s] {
            std::uint32_t seed = 7 + static_cast<std::uint32_t>(s);
            for (int i = 0; i < kPerWaiter; ++i) {
                for (int w = s; w < kWaiters; w += kSetters) {
                    if (i % 64 == 0) jitter(seed);
                    producers[w][i].set_value(w * kPerWaiter + i);
                }
            }
        });
    }
    std::atomic<int> wrong{0};
    for (int w = 0; w < kWaiters; ++w) {
        threads.emplace_back([&, w] {
            for (int i = 0; i < kPerWaiter; ++i) {
                if (w == 0 && i % 3 == 0) {
                    futures[w][i] = Future<int>();  // dropped unread, maybe before its value
                    continue;
                }
                if (futures[w][i].wait_for(kNoHang) != std::future_status::ready ||
                    futures[w][i].get() != w * kPerWaiter + i) {
                    ++wrong;
                }
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(wrong.load(), 0);
}

// --- SharedFuture ------------------------------------------------------------

TEST(SharedFuture, ShareInvalidatesTheFutureAndEveryCopyReadsTheValue) {
    auto [p, f] = make_future<std::string>();
    SharedFuture<std::string> a = f.share();
    EXPECT_FALSE(f.valid());
    SharedFuture<std::string> b = a;  // a copy
    SharedFuture<std::string> c;
    EXPECT_FALSE(c.valid());
    c = b;
    EXPECT_FALSE(a.is_ready());
    p.set_value("shared");
    EXPECT_EQ(a.get(), "shared");
    EXPECT_EQ(&a.get(), &c.get()) << "one value, not copies";
    EXPECT_EQ(b.get(), "shared");
    EXPECT_TRUE(a.valid()) << "get() leaves a shared future valid";
    Future<int> invalid;
    EXPECT_THROW(invalid.share(), std::future_error);
}

TEST(SharedFuture, ExceptionIsRethrownByEveryGet) {
    auto [p, f] = make_future<int>();
    SharedFuture<int> a = f.share();
    SharedFuture<int> b = a;
    p.set_exception(std::make_exception_ptr(std::runtime_error("boom")));
    EXPECT_THROW(a.get(), std::runtime_error);
    EXPECT_THROW(a.get(), std::runtime_error);
    EXPECT_THROW(b.get(), std::runtime_error);
}

TEST(SharedFuture, VoidAndLastCopyFreesTheValue) {
    auto [pv, fv] = make_future<void>();
    SharedFuture<void> v = fv.share();
    pv.set_value();
    v.get();
    ASSERT_EQ(Counted::live.load(), 0);
    {
        auto [p, f] = make_future<Counted>();
        SharedFuture<Counted> a = f.share();
        p.set_value(Counted(5));
        {
            SharedFuture<Counted> b = a;
            EXPECT_EQ(b.get().value, 5);
        }
        EXPECT_EQ(Counted::live.load(), 1) << "a still holds it";
    }
    EXPECT_EQ(Counted::live.load(), 0);
}

// --- continuations (what dependent items wait with) ----------------------------

struct CountingContinuation : detail::Continuation {
    std::atomic<int> runs{0};
    CountingContinuation() {
        run = [](detail::Continuation* c) noexcept { ++static_cast<CountingContinuation*>(c)->runs; };
    }
};

TEST(Continuation, RunsOnceWhetherAddedBeforeOrAfterTheValue) {
    auto [p, f] = make_future<int>();
    auto* state = detail::FutureAccess::state(f);
    CountingContinuation before, after;
    state->on_ready(&before);
    EXPECT_EQ(before.runs.load(), 0);
    p.set_value(3);  // releases the producer's reference; f keeps the state
    EXPECT_EQ(before.runs.load(), 1);
    state->on_ready(&after);
    EXPECT_EQ(after.runs.load(), 1) << "added after the value: runs at once, on the adding thread";
    EXPECT_EQ(before.runs.load(), 1);
    EXPECT_EQ(f.get(), 3);
}

// Adders race the setter: each continuation must run exactly once (a missed one is an
// item that never runs; a doubled one, an item queued twice).
TEST(ContinuationStress, AddersRaceTheSetter) {
    constexpr int kRounds = 3000, kAdders = 2, kPerAdder = 8;
    int wrong = 0;
    for (int round = 0; round < kRounds; ++round) {
        auto [p, f] = make_future<int>(round % 2 == 1);
        auto* state = detail::FutureAccess::state(f);
        std::vector<CountingContinuation> nodes(kAdders * kPerAdder);
        std::atomic<int> go{0};
        std::vector<std::thread> adders;
        for (int a = 0; a < kAdders; ++a) {
            adders.emplace_back([&, a] {
                go.fetch_add(1);
                while (go.load() < kAdders + 1) std::this_thread::yield();
                for (int i = 0; i < kPerAdder; ++i) state->on_ready(&nodes[a * kPerAdder + i]);
            });
        }
        go.fetch_add(1);
        while (go.load() < kAdders + 1) std::this_thread::yield();
        p.set_value(round);
        for (auto& t : adders) t.join();
        for (auto& n : nodes) wrong += n.runs.load() != 1;
        if (wrong) {
            ADD_FAILURE() << "round " << round;
            break;
        }
    }
    EXPECT_EQ(wrong, 0);
}

// --- the slabs that queued items' blocks are carved from (block_pool.hpp) ---------

/// Slabs in use (carved from, or holding blocks not yet freed), in this process.
std::int64_t live_slabs() { return detail::Slab::count().load(); }

void* carve(std::size_t size, detail::BlockTag& tag) { return detail::allocate_pooled_block(size, 16, tag); }

TEST(BlockPool, BlocksFreedOnOtherThreadsFreeTheirSlabs) {
    const std::int64_t before = live_slabs();
    constexpr int kCarvers = 4;
    constexpr int kBlocks = 20000;
    std::mutex mutex;
    std::vector<std::pair<void*, detail::BlockTag>> handed;
    std::atomic<int> carving{kCarvers};
    std::thread freer([&] {
        std::size_t freed = 0;
        while (freed < std::size_t{kCarvers} * kBlocks) {
            std::vector<std::pair<void*, detail::BlockTag>> mine;
            {
                std::lock_guard<std::mutex> lock(mutex);
                mine.swap(handed);
            }
            for (auto [p, tag] : mine) {
                ASSERT_EQ(*static_cast<unsigned char*>(p), 0xAB);  // nobody else was given this block
                *static_cast<unsigned char*>(p) = 0;
                detail::free_block(p, tag);
            }
            freed += mine.size();
            if (mine.empty()) std::this_thread::yield();
        }
    });
    std::vector<std::thread> carvers;
    for (int c = 0; c < kCarvers; ++c) {
        carvers.emplace_back([&, c] {
            for (int i = 0; i < kBlocks; ++i) {
                detail::BlockTag tag = 0;
                void* p = carve(48 + 16 * static_cast<std::size_t>((i + c) % 8), tag);
                ASSERT_EQ(tag & 1, 1u) << "a small block comes from a slab";
                *static_cast<unsigned char*>(p) = 0xAB;
                std::lock_guard<std::mutex> lock(mutex);
                handed.emplace_back(p, tag);
            }
            carving.fetch_sub(1);
        });
    }
    for (auto& t : carvers) t.join();
    freer.join();
    EXPECT_EQ(carving.load(), 0);
    EXPECT_EQ(live_slabs(), before) << "every slab is out of use once its blocks are freed and its carver has exited";
}

TEST(BlockPool, AThreadReusesItsSlabOnceEveryBlockIsFreed) {
    const std::int64_t before = live_slabs();
    std::int64_t during = 0;
    std::set<detail::BlockTag> slabs;
    std::thread([&] {
        for (int i = 0; i < 100000; ++i) {  // some 780 slabs' worth of 128-byte blocks
            detail::BlockTag tag = 0;
            void* p = carve(128, tag);
            slabs.insert(tag);
            detail::free_block(p, tag);
        }
        during = live_slabs();
    }).join();
    EXPECT_EQ(slabs.size(), 1u) << "a new slab each time the old one filled up";
    EXPECT_EQ(during, before + 1);
    EXPECT_EQ(live_slabs(), before);
}

TEST(BlockPool, AKeptBlockKeepsItsSlabUntilItIsFreed) {
    const std::int64_t before = live_slabs();
    std::pair<void*, detail::BlockTag> kept{};
    std::thread([&] {
        std::vector<std::pair<void*, detail::BlockTag>> blocks(1000);  // some 8 slabs
        for (auto& [p, tag] : blocks) p = carve(128, tag);
        kept = blocks[500];
        for (std::size_t i = 0; i < blocks.size(); ++i) {
            if (i != 500) detail::free_block(blocks[i].first, blocks[i].second);
        }
    }).join();
    EXPECT_EQ(live_slabs(), before + 1);
    detail::free_block(kept.first, kept.second);
    EXPECT_EQ(live_slabs(), before);
}

TEST(BlockPool, LargeAndOverAlignedBlocksComeFromTheHeap) {
    const std::int64_t before = live_slabs();
    std::thread([&] {
        detail::BlockTag tag = 0;
        void* large = detail::allocate_pooled_block(detail::Slab::kMaxBlock + 1, 16, tag);
        EXPECT_EQ(tag, 16u);
        detail::free_block(large, tag);
        void* aligned = detail::allocate_pooled_block(64, 64, tag);
        EXPECT_EQ(tag, 64u);
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(aligned) % 64, 0u);
        detail::free_block(aligned, tag);
        EXPECT_EQ(live_slabs(), before);
    }).join();
}

/// Leaves room for at least `n` more slabs in the cache of freed slabs, handing cached
/// ones back to the heap when an earlier test in this process filled it.
void make_room_in_slab_cache(std::size_t n) {
    auto& cache = detail::SlabCache::instance();
    while (cache.size() + n > detail::SlabCache::kMaxSlabs) {
        detail::Slab* s = cache.take();
        s->~Slab();
        ::operator delete(s);
    }
}

struct Carved {
    std::set<detail::BlockTag> slabs;  // the slabs the blocks came from
    std::size_t cached_meanwhile = 0;  // the cache's size while the thread held them
};

/// Carves `n` blocks of 128 bytes on a thread of its own and frees them there; the
/// thread has exited (its last slab retired) on return.
Carved carve_and_free_on_a_thread(std::size_t n) {
    Carved carved;
    std::thread([&] {
        std::vector<std::pair<void*, detail::BlockTag>> blocks(n);
        for (auto& [p, tag] : blocks) {
            p = carve(128, tag);
            carved.slabs.insert(tag);
        }
        carved.cached_meanwhile = detail::SlabCache::instance().size();
        for (auto [p, tag] : blocks) detail::free_block(p, tag);
    }).join();
    return carved;
}

TEST(BlockPool, FreedSlabsAreReusedByTheNextThreadThatNeedsOne) {
    make_room_in_slab_cache(64);
    auto& cache = detail::SlabCache::instance();
    const std::int64_t before = live_slabs();
    const Carved first = carve_and_free_on_a_thread(1000);  // some 8 slabs
    ASSERT_GE(first.slabs.size(), 7u);
    EXPECT_EQ(live_slabs(), before);
    EXPECT_EQ(cache.size(), first.cached_meanwhile + first.slabs.size()) << "each freed slab is kept";
    const Carved second = carve_and_free_on_a_thread(1000);
    EXPECT_EQ(second.cached_meanwhile, cache.size() - second.slabs.size()) << "its slabs came from the cache";
    EXPECT_EQ(second.slabs, first.slabs) << "the newest cached slabs are taken first";
    EXPECT_EQ(live_slabs(), before);
}

TEST(BlockPool, TheCacheKeepsAtMostItsCapAndFreesTheRest) {
    const std::int64_t before = live_slabs();
    const std::size_t slabs = detail::SlabCache::kMaxSlabs + 16;
    const std::size_t per_slab = (detail::Slab::kBytes - detail::Slab::kHeader) / 128;
    ASSERT_GE(carve_and_free_on_a_thread(slabs * per_slab).slabs.size(), slabs);
    EXPECT_EQ(detail::SlabCache::instance().size(), detail::SlabCache::kMaxSlabs);
    EXPECT_EQ(live_slabs(), before);
}

/// A Future whose state was carved from a slab outlives the thread that carved it.
TEST(BlockPool, AFutureOutlivesTheThreadThatCarvedItsState) {
    const std::int64_t before = live_slabs();
    Producer<std::string> producer{};
    Future<std::string> future;
    std::thread([&] {
        detail::BlockTag tag = 0;
        void* memory = carve(sizeof(detail::FutureState<std::string>), tag);
        auto* state = ::new (memory) detail::FutureState<std::string>(tag);
        producer = Producer<std::string>{state, true};
        future = state->make_future();
    }).join();
    EXPECT_EQ(live_slabs(), before + 1);
    std::thread setter([&] { producer.set_value(std::string(100, 'x')); });
    EXPECT_EQ(future.get(), std::string(100, 'x'));
    setter.join();
    EXPECT_EQ(live_slabs(), before);
}

}  // namespace
}  // namespace pyscheduler::test
