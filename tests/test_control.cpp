// Control over running work: pause()/resume() of a handler, and deadlines
// (ItemOptions::deadline, HandlerOptions::queue_timeout) that fail items with
// Timeout before they reach Python.
#include <atomic>
#include <future>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

using Steady = std::chrono::steady_clock;

// Producers keep queueing while the handler is paused; nothing runs until resume(),
// then every item runs exactly once.
TEST(Pause, NothingStartsUntilResumeThenEverythingRunsOnce) {
    HandlerOptions o;
    o.batch_size = 4;
    o.prefetch_depth = 2;
    auto h = load("identity", o);
    h.pause();
    EXPECT_TRUE(h.is_paused());
    constexpr int kPerProducer = 500;
    std::vector<std::atomic<int>> runs(2 * kPerProducer);
    std::vector<std::future<int>> futures[2];
    std::vector<std::thread> producers;
    for (int p = 0; p < 2; ++p) {
        producers.emplace_back([&, p] {
            for (int i = p * kPerProducer; i < (p + 1) * kPerProducer; ++i) {
                futures[p].push_back(h.queue_invoke([i] { return i; }, [&runs](py::object r) {
                    const int i = r.cast<int>();
                    ++runs[i];
                    return i;
                }));
            }
        });
    }
    for (auto& t : producers) t.join();
    // The commit thread fills the ring (8 slots) behind the batch an executor holds.
    ASSERT_TRUE(eventually([&] { return h.get_queue_stats().execute_queue_size == 8; }));
    const QueueStats paused = h.get_queue_stats();
    EXPECT_EQ(paused.completed, 0u);
    EXPECT_EQ(paused.total_enqueued, 2u * kPerProducer);
    for (const auto& r : runs) ASSERT_EQ(r.load(), 0) << "a batch ran while paused";
    h.resume();
    EXPECT_FALSE(h.is_paused());
    for (auto& fs : futures) {
        for (auto& f : fs) ASSERT_TRUE(completes(f));
    }
    for (const auto& r : runs) EXPECT_EQ(r.load(), 1);
    EXPECT_EQ(h.get_queue_stats().completed, 2u * kPerProducer);
}

// Once every 256 items queued, a producer gives up its core when the commit thread
// has staged nothing since the last look and the ring is less than half full
// (QueueStats::producer_yields). Here the commit thread is held inside the first
// item's commit function, so each of the 16 looks at 4096 items yields, and none
// before the first 256 items. Paused instead, the commit thread fills the ring and
// then waits for the executor, which a yield does not help: no look yields.
TEST(ProducerYields, OnlyWhileTheCommitThreadStagesNothingAndTheRingRunsLow) {
    HandlerOptions o;
    o.batch_size = 4;
    o.prefetch_depth = 2;
    auto cast = [](py::object r) { return r.cast<int>(); };
    {
        auto h = load("identity", o);
        std::promise<void> release;
        std::shared_future<void> released = release.get_future().share();
        std::vector<std::future<int>> futures;
        futures.push_back(h.queue_invoke([released] { released.wait(); return 0; }, cast));
        auto queue = [&](int n) {
            for (int i = 0; i < n; ++i) {
                const int v = static_cast<int>(futures.size());
                futures.push_back(h.queue_invoke([v] { return v; }, cast));
            }
        };
        queue(254);
        EXPECT_EQ(h.get_queue_stats().producer_yields, 0u);
        queue(4096 - 255);
        EXPECT_EQ(h.get_queue_stats().producer_yields, 16u);
        release.set_value();
        for (std::size_t i = 0; i < futures.size(); ++i) {
            ASSERT_TRUE(completes(futures[i]));
            EXPECT_EQ(futures[i].get(), static_cast<int>(i));
        }
    }
    auto h = load("identity", o);
    h.pause();
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 4096; ++i) futures.push_back(h.queue_invoke([i] { return i; }, cast));
    // The ring (8 slots) fills behind the batch an executor holds; the last looks find it full.
    ASSERT_TRUE(eventually([&] { return h.get_queue_stats().execute_queue_size == 8; }));
    const std::uint64_t before = h.get_queue_stats().producer_yields;
    for (int i = 0; i < 1024; ++i) futures.push_back(h.queue_invoke([i] { return i; }, cast));
    EXPECT_EQ(h.get_queue_stats().producer_yields, before);
    h.resume();
    for (auto& f : futures) ASSERT_TRUE(completes(f));
}

// A batch already in Python when pause() is called finishes; the next one waits.
TEST(Pause, TheBatchInPythonFinishesTheNextWaits) {
    load("close_gate").invoke<void>();
    auto open_gate = load("open_gate");
    auto h = load("gated_identity");
    struct OpenOnExit {  // runs before h drains: never leave a batch blocked behind a failed assertion
        InvokeHandler& gate;
        ~OpenOnExit() { gate.invoke<void>(); }
    } open_on_exit{open_gate};
    auto first = h.queue_invoke([] { return 5; }, cast_to<int>());
    load("wait_until_entered").invoke<void>();  // `first` is inside Python
    auto second = h.queue_invoke([] { return -2; }, cast_to<int>());
    h.pause();
    open_gate.invoke<void>();
    ASSERT_TRUE(completes(first));
    EXPECT_EQ(first.get(), 5);
    // The executor takes `second` and holds it: staged and taken, never completed.
    ASSERT_TRUE(eventually([&] { return h.get_queue_stats().execute_queue_size == 0; }));
    EXPECT_EQ(second.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);
    EXPECT_EQ(h.get_queue_stats().completed, 1u);
    h.resume();
    ASSERT_TRUE(completes(second));
    EXPECT_EQ(second.get(), -2);
}

TEST(Pause, ShutdownOfAPausedHandlerDrainsOrCancels) {
    for (const auto mode : {ShutdownMode::Drain, ShutdownMode::Cancel}) {
        auto h = load("identity", 4, 2);
        h.pause();
        std::vector<std::future<int>> futures;
        for (int i = 0; i < 200; ++i) futures.push_back(h.queue_invoke([i] { return i; }, cast_to<int>()));
        h.shutdown(mode);
        EXPECT_FALSE(h.is_paused()) << "shutdown resumes";
        h.pause();  // after shutdown began: nothing to pause
        EXPECT_FALSE(h.is_paused());
        for (int i = 0; i < 200; ++i) {
            ASSERT_EQ(futures[i].wait_for(std::chrono::seconds(0)), std::future_status::ready);
            if (mode == ShutdownMode::Drain) {
                EXPECT_EQ(futures[i].get(), i);
            } else {
                EXPECT_THROW(futures[i].get(), Cancelled);
            }
        }
    }
}

TEST(Pause, SynchronousInvokeKeepsWorking) {
    auto h = load("add");
    h.pause();
    EXPECT_EQ(h.invoke<int>(2, 3), 5);
    h.resume();
}

// The manager's pause reaches every handler, of either policy, and handlers started
// while it is on; its resume releases them all. A handler's own resume overrides it.
TEST(Pause, ManagerPausesEveryHandler) {
    auto a = load("identity", 4);
    auto b = load<LightweightFuturePolicy>("double", 4);
    python().pause();
    EXPECT_TRUE(python().is_paused());
    EXPECT_TRUE(python<LightweightFuturePolicy>().is_paused()) << "one switch for the process";
    EXPECT_TRUE(a.is_paused());
    EXPECT_TRUE(b.is_paused());
    auto c = load("identity", 4);  // started while paused
    EXPECT_TRUE(c.is_paused());
    auto d = load("identity", 4);
    d.resume();  // its own resume overrides the manager's pause
    std::vector<std::future<int>> fa, fc;
    std::vector<Future<int>> fb;
    for (int i = 0; i < 100; ++i) {
        fa.push_back(a.queue_invoke([i] { return i; }, cast_to<int>()));
        fb.push_back(b.queue_invoke([i] { return i; }, cast_to<int>()));
        fc.push_back(c.queue_invoke([i] { return i; }, cast_to<int>()));
    }
    auto fd = d.queue_invoke([] { return 7; }, cast_to<int>());
    ASSERT_TRUE(completes(fd));
    EXPECT_EQ(fd.get(), 7);
    ASSERT_TRUE(eventually([&] { return a.get_queue_stats().execute_queue_size > 0; }));
    EXPECT_EQ(a.get_queue_stats().completed + b.get_queue_stats().completed + c.get_queue_stats().completed, 0u);
    python().resume();
    EXPECT_FALSE(python().is_paused());
    for (int i = 0; i < 100; ++i) {
        ASSERT_TRUE(completes(fa[i]));
        ASSERT_TRUE(completes(fb[i]));
        ASSERT_TRUE(completes(fc[i]));
        EXPECT_EQ(fa[i].get(), i);
        EXPECT_EQ(fb[i].get(), 2 * i);
        EXPECT_EQ(fc[i].get(), i);
    }
}

// Pause and resume racing producers and each other: every item completes once.
TEST(PauseStress, PauseResumeRacingProducers) {
    auto h = load("identity", 8, 2);
    std::atomic<bool> done{false};
    std::thread toggler([&] {
        while (!done.load()) {
            h.pause();
            std::this_thread::yield();
            h.resume();
        }
    });
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 20000; ++i) futures.push_back(h.queue_invoke([i] { return i; }, cast_to<int>()));
    for (int i = 0; i < 20000; ++i) {
        ASSERT_TRUE(completes(futures[i]));
        EXPECT_EQ(futures[i].get(), i);
    }
    done = true;
    toggler.join();
    h.resume();
}

// --- deadlines --------------------------------------------------------------------

TEST(Deadline, PassedWhileQueuedFailsWithoutRunning) {
    auto h = load_own_gil_module("read_or_echo");
    Pipe pipe;
    auto blocker = h.queue_invoke([fd = pipe.read_end()] { return fd; }, cast_to<int>());
    std::atomic<int> callbacks{0};
    auto late = h.queue_invoke(ItemOptions{.deadline = Steady::now()}, [] { return -1; }, [&](py::object) {
        ++callbacks;
        return 0;
    });
    pipe.release(1);
    ASSERT_TRUE(completes(late));
    const std::string message = what_of<Timeout>([&] { late.get(); });
    EXPECT_NE(message.find("deadline passed while it waited to be committed"), std::string::npos) << message;
    EXPECT_EQ(callbacks.load(), 0);
    EXPECT_EQ(blocker.get(), 1);
    const QueueStats s = h.get_queue_stats();
    EXPECT_EQ(s.timed_out, 1u);
    EXPECT_EQ(s.failed, 1u);
}

// Committed in time, the deadline passes while the item waits in the prefetch ring:
// the executor fails it instead of passing it to Python.
TEST(Deadline, PassedInThePrefetchRing) {
    auto h = load_own_gil_module("read_or_echo");
    Pipe pipe;
    auto blocker = h.queue_invoke([fd = pipe.read_end()] { return fd; }, cast_to<int>());
    const auto deadline = Steady::now() + std::chrono::seconds(1);
    std::atomic<int> callbacks{0};
    auto late = h.queue_invoke(ItemOptions{.deadline = deadline}, [] { return -1; }, [&](py::object) {
        ++callbacks;
        return 0;
    });
    ASSERT_TRUE(eventually([&] { return h.get_queue_stats().execute_queue_size == 1; })) << "committed";
    ASSERT_LT(Steady::now(), deadline) << "committed before its deadline";
    std::this_thread::sleep_until(deadline);  // the condition under test: the clock passes the deadline
    pipe.release(1);
    ASSERT_TRUE(completes(late));
    const std::string message = what_of<Timeout>([&] { late.get(); });
    EXPECT_NE(message.find("in the prefetch ring"), std::string::npos) << message;
    EXPECT_EQ(callbacks.load(), 0);
    EXPECT_EQ(h.get_queue_stats().timed_out, 1u);
}

TEST(Deadline, NotReachedRunsNormally) {
    auto h = load("identity");
    auto f = h.queue_invoke(ItemOptions{.deadline = Steady::now() + std::chrono::hours(1)}, [] { return 7; },
                            cast_to<int>());
    ASSERT_TRUE(completes(f));
    EXPECT_EQ(f.get(), 7);
    EXPECT_EQ(h.get_queue_stats().timed_out, 0u);
}

// HandlerOptions::queue_timeout: the same, counted from when each item is queued.
TEST(Deadline, HandlerQueueTimeout) {
    HandlerOptions o;
    o.queue_timeout = std::chrono::milliseconds(50);
    auto h = load_own_gil_module("read_or_echo", o);
    Pipe pipe;
    auto blocker = h.queue_invoke([fd = pipe.read_end()] { return fd; }, cast_to<int>());
    ASSERT_TRUE(eventually([&] { return h.get_queue_stats().execute_queue_size == 0 &&
                                        h.get_queue_stats().total_enqueued == 1; }));
    auto waits = h.queue_invoke([] { return -3; }, cast_to<int>());
    std::this_thread::sleep_until(Steady::now() + std::chrono::milliseconds(50));  // its timeout passes
    pipe.release(2);
    ASSERT_TRUE(completes(waits));
    EXPECT_THROW(waits.get(), Timeout);
    EXPECT_EQ(blocker.get(), 2) << "the item in Python was not affected";
    // A fresh item runs: the timeout counts from each item's own queueing.
    auto fresh = h.queue_invoke([] { return -4; }, cast_to<int>());
    ASSERT_TRUE(completes(fresh));
    EXPECT_EQ(fresh.get(), -4);
}

TEST(Deadline, QueueTimeoutIsChecked) {
    HandlerOptions o;
    o.queue_timeout = std::chrono::microseconds(-1);
    EXPECT_NE(what_of<std::invalid_argument>([&] { load("identity", o); }).find("queue_timeout"), std::string::npos);
    o.queue_timeout = std::chrono::hours(24 * 365 * 1000);
    EXPECT_THROW(load("identity", o), std::invalid_argument);
}

// A dependent's deadline applies once its inputs are in: a failed-by-deadline input
// fails its dependents with DependencyFailed naming the Timeout.
TEST(Deadline, TimedOutInputFailsItsDependents) {
    auto h = load("identity");
    auto input = h.submit(ItemOptions{.deadline = Steady::now()}, [] { return 1L; }, cast_to<long>());
    auto dependent = h.submit([](long v) { return v; }, cast_to<long>(), std::move(input));
    ASSERT_TRUE(completes(dependent));
    const std::string message = what_of<DependencyFailed>([&] { dependent.get(); });
    EXPECT_NE(message.find("deadline passed"), std::string::npos) << message;
}

}  // namespace
}  // namespace pyscheduler::test
