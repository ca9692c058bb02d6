// Items that take other items' futures as arguments (dependencies), across handlers,
// and the order in which a handler commits waiting items (HandlerOptions::order,
// ItemOptions::priority).
#include <algorithm>
#include <atomic>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

auto pass = [](long v) { return v; };

TEST(Dependencies, ChainAcrossHandlersPassesValues) {
    auto doubler = load("double");
    auto ident = load("identity");
    Future<long> a = doubler.submit([] { return 21L; }, cast_to<long>());
    Future<long> b = ident.submit([](long x) { return x + 1; }, cast_to<long>(), std::move(a));
    EXPECT_FALSE(a.valid()) << "moved into the item";
    // The last link returns the policy's future (std::future) through queue_invoke.
    std::future<long> c = doubler.queue_invoke([](long x) { return x; }, cast_to<long>(), std::move(b));
    ASSERT_TRUE(completes(c));
    EXPECT_EQ(c.get(), 2 * (42 + 1));
}

// x feeds y and z (a SharedFuture), which both feed w: the diamond of a task graph,
// over three handlers.
TEST(Dependencies, DiamondOverThreeHandlers) {
    auto h1 = load("identity");
    auto h2 = load("double");
    auto h3 = load("identity");
    for (long round = 0; round < 20; ++round) {
        SharedFuture<long> x = h1.submit([round] { return round; }, cast_to<long>()).share();
        Future<long> y = h2.submit(pass, cast_to<long>(), x);
        Future<long> z = h3.submit([](const long& v) { return v + 100; }, cast_to<long>(), x);
        Future<long> w = h1.submit([](long a, long b, const std::string& tag) { return a + b + static_cast<long>(tag.size()); },
                                   cast_to<long>(), std::move(y), std::move(z), std::string("four"));
        ASSERT_TRUE(completes(w));
        EXPECT_EQ(w.get(), 2 * round + round + 100 + 4);
        EXPECT_EQ(x.get(), round) << "the shared input stays readable";
    }
}

TEST(Dependencies, FanInOfManyInputs) {
    auto doubler = load("double", 8);
    auto ident = load("identity");
    std::vector<SharedFuture<long>> parts;
    for (long i = 0; i < 8; ++i) parts.push_back(doubler.submit([i] { return i; }, cast_to<long>()).share());
    Future<long> sum = ident.submit(
        [](long a, long b, long c, long d, long e, long f, long g, long h) { return a + b + c + d + e + f + g + h; },
        cast_to<long>(), parts[0], parts[1], parts[2], parts[3], parts[4], parts[5], parts[6], parts[7]);
    ASSERT_TRUE(completes(sum));
    EXPECT_EQ(sum.get(), 2 * (0 + 1 + 2 + 3 + 4 + 5 + 6 + 7));
}

// One input blocked in Python: its dependent waits without holding anything up. The
// dependent's handler keeps running other items, and counts the dependent as waiting.
TEST(Dependencies, AWaitingItemCostsNoThread) {
    auto slow = load_own_gil_module("read_or_echo");
    auto ident = load("identity");
    Pipe pipe;
    Future<long> input = slow.submit([fd = pipe.read_end()] { return static_cast<long>(fd); }, cast_to<long>());
    Future<long> dependent = ident.submit([](long v) { return v * 10; }, cast_to<long>(), std::move(input));
    EXPECT_EQ(ident.get_queue_stats().waiting, 1u);
    for (long i = 0; i < 100; ++i) {
        auto f = ident.submit([i] { return i; }, cast_to<long>());
        ASSERT_TRUE(completes(f));
        EXPECT_EQ(f.get(), i);
    }
    EXPECT_FALSE(dependent.is_ready());
    pipe.release(7);
    ASSERT_TRUE(completes(dependent));
    EXPECT_EQ(dependent.get(), 70);
    EXPECT_EQ(ident.get_queue_stats().waiting, 0u);
}

// A failure in the middle of a chain: what comes after it fails with
// DependencyFailed carrying the original error, without running; what came before
// is untouched.
TEST(Dependencies, FailureInTheMiddleOfAChainReachesEverythingAfterIt) {
    auto checker = load("raise_if_negative");
    auto ident = load("identity");
    std::atomic<int> commits_after{0};
    SharedFuture<long> first = ident.submit([] { return 5L; }, cast_to<long>()).share();
    Future<long> bad = checker.submit([](long v) { return -v; }, cast_to<long>(), first);
    Future<long> next = ident.submit(
        [&](long v) {
            ++commits_after;
            return v;
        },
        cast_to<long>(), std::move(bad));
    Future<long> last = ident.submit(
        [&](long v) {
            ++commits_after;
            return v;
        },
        cast_to<long>(), std::move(next));
    ASSERT_TRUE(completes(last));
    const std::string message = what_of<DependencyFailed>([&] { last.get(); });
    EXPECT_NE(message.find("argument 0 (an input) failed"), std::string::npos) << message;
    EXPECT_NE(message.find("ValueError"), std::string::npos) << "the root cause travels down: " << message;
    EXPECT_NE(message.find("negative item"), std::string::npos) << message;
    EXPECT_EQ(commits_after.load(), 0) << "failed dependents do not run";
    EXPECT_EQ(first.get(), 5);
}

TEST(Dependencies, CancelledInputFailsTheDependent) {
    auto blocked = load_own_gil_module("read_or_echo");
    auto upstream = load("identity");
    auto downstream = load("identity");
    Pipe pipe;
    auto gate = blocked.submit([fd = pipe.read_end()] { return static_cast<long>(fd); }, cast_to<long>());
    // Upstream items wait behind an input of `blocked`; cancelling upstream fails
    // them, and through them their dependents downstream.
    std::vector<Future<long>> dependents;
    SharedFuture<long> gate_shared = gate.share();
    for (int i = 0; i < 10; ++i) {
        Future<long> mid = upstream.submit(pass, cast_to<long>(), gate_shared);
        dependents.push_back(downstream.submit(pass, cast_to<long>(), std::move(mid)));
    }
    upstream.shutdown(ShutdownMode::Cancel);
    for (auto& d : dependents) {
        ASSERT_TRUE(completes(d));
        const std::string message = what_of<DependencyFailed>([&] { d.get(); });
        EXPECT_NE(message.find("while waiting for its inputs"), std::string::npos) << message;
    }
    pipe.release(3);
    EXPECT_EQ(gate_shared.get(), 3);
}

// shutdown(Cancel) with 10 000 items waiting on an input that is stuck in Python:
// every one completes with Cancelled at once, without waiting for the input.
TEST(Dependencies, CancelWithTenThousandWaitingItems) {
    auto blocked = load_own_gil_module("read_or_echo");
    auto h = load("identity", 64);
    Pipe pipe;
    SharedFuture<long> input =
        blocked.submit([fd = pipe.read_end()] { return static_cast<long>(fd); }, cast_to<long>()).share();
    std::vector<Future<long>> waiting;
    for (int i = 0; i < 10000; ++i) waiting.push_back(h.submit(pass, cast_to<long>(), input));
    EXPECT_EQ(h.get_queue_stats().waiting, 10000u);
    h.shutdown(ShutdownMode::Cancel);
    EXPECT_FALSE(input.is_ready()) << "shutdown(Cancel) did not wait for the input";
    for (auto& f : waiting) {
        ASSERT_EQ(f.wait_for(std::chrono::seconds(0)), std::future_status::ready);
        EXPECT_THROW(f.get(), Cancelled);
    }
    EXPECT_EQ(h.get_queue_stats().waiting, 0u);
    // Items queued afterwards are refused like any other.
    auto late = h.submit(pass, cast_to<long>(), input);
    ASSERT_TRUE(completes(late));
    EXPECT_THROW(late.get(), Cancelled);
    pipe.release(1);
    EXPECT_EQ(input.get(), 1);
}

// A handler destroyed while items wait for inputs of another handler: destruction
// drains, so it returns once the inputs arrived and the items ran.
TEST(Dependencies, HandlerDestroyedBeforeItsInputsComplete) {
    auto blocked = load_own_gil_module("read_or_echo");
    Pipe pipe;
    SharedFuture<long> input =
        blocked.submit([fd = pipe.read_end()] { return static_cast<long>(fd); }, cast_to<long>()).share();
    std::vector<Future<long>> results;
    auto h = std::make_unique<InvokeHandler>(load("double", 16));
    for (long i = 0; i < 500; ++i) {
        results.push_back(h->submit([i](long v) { return v + i; }, cast_to<long>(), input));
    }
    std::atomic<bool> destroyed{false};
    std::thread destroyer([&] {
        h.reset();
        destroyed = true;
    });
    EXPECT_FALSE(destroyed.load()) << "destruction waits for the inputs";
    pipe.release(9);
    destroyer.join();
    for (long i = 0; i < 500; ++i) {
        ASSERT_EQ(results[i].wait_for(std::chrono::seconds(0)), std::future_status::ready);
        EXPECT_EQ(results[i].get(), 2 * (9 + i));
    }
}

// While shutdown(Drain) waits for a dependent item's input, an item queued then is
// refused. Its producer wakes the commit thread (its count was taken back); that wake
// must not read as the shutdown sentinel, or the commit thread would stop before the
// dependent item is queued, and the dependent would never run.
TEST(Dependencies, AnItemRefusedWhileDrainWaitsForInputsDoesNotStopTheCommitThread) {
    auto gated = load("gated_identity");
    Gate gate;
    SharedFuture<long> input = gated.submit([] { return 5L; }, cast_to<long>()).share();
    gate.wait_until_entered();
    auto h = load("double", 16);
    Future<long> dependent = h.submit([](long v) { return v; }, cast_to<long>(), input);
    std::thread stopper([&] { h.shutdown(ShutdownMode::Drain); });
    while (!h.is_shut_down()) std::this_thread::yield();
    Future<long> refused = h.submit([] { return 1L; }, cast_to<long>());
    EXPECT_THROW(refused.get(), Cancelled);
    gate.open();
    stopper.join();
    ASSERT_TRUE(completes(dependent));
    EXPECT_EQ(dependent.get(), 10);
}

TEST(Dependencies, InvalidFutureArgumentIsRefusedAndCostsNoSlot) {
    HandlerOptions o;
    o.queue_capacity = 1;
    auto h = load("identity", o);
    Future<long> empty;
    const std::string message =
        what_of<std::invalid_argument>([&] { (void)h.submit(pass, cast_to<long>(), std::move(empty)); });
    EXPECT_NE(message.find("argument 0 is a future without a state"), std::string::npos) << message;
    SharedFuture<long> shared_empty;
    EXPECT_THROW((void)h.submit(pass, cast_to<long>(), shared_empty), std::invalid_argument);
    auto f = h.submit([] { return 1L; }, cast_to<long>());  // the only slot is still free
    ASSERT_TRUE(completes(f));
    EXPECT_EQ(f.get(), 1);
}

// A Python error in the input's callback, and in the dependent's own commit: each is
// reported where it happened.
TEST(Dependencies, ErrorsOfTheDependentItselfAreItsOwn) {
    auto ident = load("identity");
    SharedFuture<long> ok = ident.submit([] { return 2L; }, cast_to<long>()).share();
    Future<long> commit_throws = ident.submit(
        [](long) -> long { throw std::runtime_error("commit refused"); }, cast_to<long>(), ok);
    ASSERT_TRUE(completes(commit_throws));
    EXPECT_THROW(commit_throws.get(), std::runtime_error);
    Future<long> fine = ident.submit(pass, cast_to<long>(), ok);
    ASSERT_TRUE(completes(fine));
    EXPECT_EQ(fine.get(), 2);
}

#if PY_VERSION_HEX >= 0x030C0000
// Values cross interpreters as C++ values: a Main handler feeds an own-GIL pool.
TEST(Dependencies, MainFeedsAnOwnGilPool) {
    auto main_handler = load("double");
    HandlerOptions o;
    o.interpreter = InterpreterKind::OwnGil;
    o.workers = 2;
    auto pool = load_own_gil_module("squares", o);
    std::vector<Future<long>> results;
    for (long i = 0; i < 200; ++i) {
        Future<long> doubled = main_handler.submit([i] { return i; }, cast_to<long>());
        results.push_back(pool.submit(pass, cast_to<long>(), std::move(doubled)));
    }
    for (long i = 0; i < 200; ++i) {
        ASSERT_TRUE(completes(results[i]));
        EXPECT_EQ(results[i].get(), 4 * i * i);
    }
}
#endif

// Many producers build small graphs over three handlers at once (TSan: the
// continuation list, the registry and the queue are raced from every side).
TEST(DependenciesStress, GraphsFromManyThreads) {
    auto h1 = load("double", 8);
    auto h2 = load("identity", 4);
    auto h3 = load("identity", 16, 2);
    constexpr int kThreads = 4, kGraphs = 400;
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            std::vector<Future<long>> ends;
            std::vector<long> expected;
            for (long g = 0; g < kGraphs; ++g) {
                const long base = t * 100000 + g;
                SharedFuture<long> root = h1.submit([base] { return base; }, cast_to<long>()).share();
                Future<long> left = h2.submit([](long v) { return v + 1; }, cast_to<long>(), root);
                Future<long> right = h3.submit([](long v) { return v + 2; }, cast_to<long>(), root);
                ends.push_back(h3.submit([](long a, long b) { return a + b; }, cast_to<long>(), std::move(left),
                                         std::move(right)));
                expected.push_back(2 * base + 1 + 2 * base + 2);
            }
            for (std::size_t i = 0; i < ends.size(); ++i) {
                if (!completes(ends[i]) || ends[i].get() != expected[i]) ++wrong;
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(wrong.load(), 0);
}

// shutdown(Cancel) races producers adding dependents and inputs completing: every
// future completes, with its value or Cancelled (never lost, never twice), and no
// item is taken by Cancel while its producer still adds its Links (TSan found that).
TEST(DependenciesStress, CancelRacesInputsAndProducers) {
    for (int round = 0; round < 10; ++round) {
        auto inputs = load("identity", 4);
        auto h = load("identity", 8);
        std::atomic<bool> go{false};
        std::atomic<long> values{0}, cancelled{0}, other{0};
        std::vector<std::thread> producers;
        for (int t = 0; t < 2; ++t) {
            producers.emplace_back([&] {
                std::vector<Future<long>> mine;
                while (!go.load()) std::this_thread::yield();
                for (long i = 0; i < 2000; ++i) {
                    Future<long> in = inputs.submit([i] { return i; }, cast_to<long>());
                    mine.push_back(h.submit([](long v) { return v; }, cast_to<long>(), std::move(in)));
                }
                for (auto& f : mine) {
                    if (!completes(f)) {
                        ++other;
                        continue;
                    }
                    try {
                        f.get();
                        ++values;
                    } catch (const Cancelled&) {
                        ++cancelled;
                    } catch (...) {
                        ++other;
                    }
                }
            });
        }
        go = true;
        std::this_thread::yield();
        h.shutdown(ShutdownMode::Cancel);
        for (auto& p : producers) p.join();
        EXPECT_EQ(values + cancelled, 4000);
        EXPECT_EQ(other.load(), 0);
    }
}

// --- order and priorities -------------------------------------------------------

/// A single-worker handler (batch 1, prefetch 1) of gated_identity whose first item
/// is kept in Python by a gate, while the test queues more; records the order in
/// which items' callbacks run.
struct GatedHandler {
    explicit GatedHandler(Order order) : h(make(order)), waiter(load("wait_until_entered")), gate(load("open_gate")) {
        load("close_gate").invoke<void>();
    }
    ~GatedHandler() { gate.invoke<void>(); }  // after a failed assertion too: h drains on destruction
    static InvokeHandler make(Order order) {
        HandlerOptions o;
        o.order = order;
        return load("gated_identity", o);
    }
    std::future<void> queue(long id, int priority = 0) {
        return h.queue_invoke(ItemOptions{priority}, [id] { return id; }, [this](py::object r) {
            std::lock_guard<std::mutex> lock(mutex);
            ran.push_back(r.cast<long>());
        });
    }
    /// Queues item 0, waits until it is inside Python, queues item 1 and waits until it
    /// is committed (the ring's one slot): everything queued after that waits in the
    /// commit thread's queue until the gate opens.
    void block() {
        futures.push_back(queue(0));
        waiter.invoke<void>();
        futures.push_back(queue(1));
        ASSERT_TRUE(eventually([&] { return h.get_queue_stats().execute_queue_size == 1; }));
    }
    std::vector<long> release_and_collect() {
        gate.invoke<void>();
        for (auto& f : futures) EXPECT_TRUE(completes(f));
        return ran;
    }
    std::mutex mutex;  // before h: its callbacks use them until h is destroyed
    std::vector<long> ran;
    InvokeHandler h;
    InvokeHandler waiter;
    InvokeHandler gate;
    std::vector<std::future<void>> futures;
};

TEST(Order, FifoRunsInArrivalOrder) {
    GatedHandler g(Order::Fifo);
    g.block();
    for (long i = 2; i < 12; ++i) g.futures.push_back(g.queue(i));
    std::vector<long> expected(12);
    std::iota(expected.begin(), expected.end(), 0L);
    EXPECT_EQ(g.release_and_collect(), expected);
}

TEST(Order, LifoRunsTheNewestWaitingItemFirst) {
    GatedHandler g(Order::Lifo);
    g.block();
    for (long i = 2; i < 12; ++i) g.futures.push_back(g.queue(i));
    // 0 was in Python and 1 committed before the others arrived: they are not overtaken.
    std::vector<long> expected{0, 1};
    for (long i = 11; i >= 2; --i) expected.push_back(i);
    EXPECT_EQ(g.release_and_collect(), expected);
}

TEST(Order, HigherPriorityFirstThenArrivalOrder) {
    GatedHandler g(Order::Fifo);
    g.block();
    for (long i = 2; i < 14; ++i) g.futures.push_back(g.queue(i, static_cast<int>(i % 3) - 1));  // -1, 0, 1
    std::vector<long> expected{0, 1};
    for (int p : {1, 0, -1}) {
        for (long i = 2; i < 14; ++i) {
            if (i % 3 - 1 == p) expected.push_back(i);
        }
    }
    EXPECT_EQ(g.release_and_collect(), expected);
}

TEST(Order, PriorityBeatsLifo) {
    GatedHandler g(Order::Lifo);
    g.block();
    for (long i = 2; i < 8; ++i) g.futures.push_back(g.queue(i, i == 3 ? 5 : 0));
    std::vector<long> expected{0, 1, 3, 7, 6, 5, 4, 2};
    EXPECT_EQ(g.release_and_collect(), expected);
}

}  // namespace
}  // namespace pyscheduler::test
