// Shutdown (drain and cancel), bounded queues, the batch-delay bound, re-entrancy,
// and churn under injected failures. Every future completes; counts add up.
#include <pybind11/embed.h>

#include <memory>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

TEST(Shutdown, DrainCompletesEverythingThenRefuses) {
    auto h = load("double", 8, 2);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 5000; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    h.shutdown(ShutdownMode::Drain);
    EXPECT_TRUE(h.is_shut_down());
    for (int i = 0; i < 5000; ++i) {
        ASSERT_EQ(futures[i].wait_for(std::chrono::seconds(0)), std::future_status::ready);
        EXPECT_EQ(futures[i].get(), 2 * i);
    }
    auto late = h.queue_invoke(commit_value(1), cast_to<int>());
    auto what = what_of<Cancelled>([&] { late.get(); });
    EXPECT_NE(what.find("shut down"), std::string::npos) << what;
    h.shutdown(ShutdownMode::Cancel);  // idempotent
    EXPECT_EQ(load("add").invoke<int>(1, 2), 3);
}

TEST(Shutdown, FromTheHandlersOwnCallbackIsRefused) {
    auto h = load("identity");
    auto f = h.queue_invoke(commit_value(1), [&](py::object) {
        h.shutdown();  // would wait for this very thread
        return 0;
    });
    auto what = what_of<std::logic_error>([&] { f.get(); });
    EXPECT_NE(what.find("from its own commit function or callback"), std::string::npos) << what;
    EXPECT_FALSE(h.is_shut_down());  // refused before anything changed
    EXPECT_EQ(h.queue_invoke(commit_value(2), cast_to<int>()).get(), 2);
}

TEST(Shutdown, SynchronousInvokeKeepsWorking) {
    auto h = load("add");
    h.shutdown();
    EXPECT_EQ(h.invoke<int>(20, 22), 42);
}

TEST(Shutdown, CancelFailsWhatHasNotReachedPython) {
    auto h = load("gated_identity", 1, 1);
    Gate gate;
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 1000; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    gate.wait_until_entered();  // item 0 is inside Python now
    auto stopper = std::async(std::launch::async, [&] { h.shutdown(ShutdownMode::Cancel); });
    while (!h.is_shut_down()) std::this_thread::yield();  // cancel is set before is_shut_down()
    gate.open();
    ASSERT_EQ(stopper.wait_for(kNoHang), std::future_status::ready);
    EXPECT_EQ(futures[0].get(), 0);  // was in Python: finishes
    for (int i = 1; i < 1000; ++i) {
        auto what = what_of<Cancelled>([&] { futures[i].get(); });
        EXPECT_NE(what.find("cancelled"), std::string::npos) << what;
    }
    auto s = h.get_queue_stats();
    EXPECT_EQ(s.completed, 1u);
    EXPECT_EQ(s.failed, 999u);
}

TEST(Shutdown, CancelWhileProducersRaceLosesNothing) {
    auto h = load("double", 4, 2);
    const RaceCounts r = shutdown_while_producers_race(h, 3000, [](int i) { return 2L * i; });
    EXPECT_EQ(r.wrong, 0);
    EXPECT_EQ(r.values + r.cancelled, 4 * 3000);
}

// A producer that finds the handler running may enqueue its item behind the shutdown
// sentinel; the commit thread must wait for it, and a refused producer's count must
// come back (or the commit thread would wait forever). Repeated to hit the window.
TEST(Shutdown, DrainWhileProducersRaceLosesNothing) {
    for (int round = 0; round < 10; ++round) {
        auto h = load("double", 4, 2);
        const RaceCounts r =
            shutdown_while_producers_race(h, 2000, [](int i) { return 2L * i; }, ShutdownMode::Drain);
        EXPECT_EQ(r.wrong, 0);
        EXPECT_EQ(r.values + r.cancelled, 4 * 2000);
        const auto s = h.get_queue_stats();
        EXPECT_EQ(s.total_enqueued, static_cast<std::uint64_t>(r.values)) << "refused items are not counted";
        EXPECT_EQ(s.completed, static_cast<std::uint64_t>(r.values)) << "every queued item ran";
        EXPECT_EQ(s.commit_queue_size, 0u);
    }
}

TEST(BoundedQueue, TryQueueInvokeRefusesWhenFullAndKeepsTheArguments) {
    HandlerOptions o;
    o.queue_capacity = 4;
    auto h = load("gated_identity", o);
    Gate gate;
    std::vector<std::future<int>> accepted;
    accepted.push_back(h.queue_invoke(commit_value(0), cast_to<int>()));
    gate.wait_until_entered();  // item 0 is inside Python
    accepted.push_back(h.queue_invoke(commit_value(1), cast_to<int>()));
    while (h.get_queue_stats().execute_queue_size != 1) std::this_thread::yield();
    // Item 1 fills the prefetch ring (batch 1 x depth 1). The commit thread may take
    // item 2 from the queue, but it waits for room before committing it, and until then
    // item 2 keeps its queue slot: the 4 slots hold items 2 to 5, all still uncommitted.
    for (int i = 2; i < 6; ++i) {
        auto f = h.try_queue_invoke(commit_value(i), cast_to<int>());
        ASSERT_TRUE(f.has_value()) << i;
        accepted.push_back(std::move(*f));
    }
    EXPECT_EQ(h.get_queue_stats().commit_queue_size, 4u);
    EXPECT_EQ(h.get_queue_stats().execute_queue_size, 1u);
    EXPECT_FALSE(h.try_queue_invoke(commit_value(6), cast_to<int>()).has_value());
    auto owned = std::make_unique<int>(7);
    auto f = h.try_queue_invoke([](std::unique_ptr<int> p) { return *p; }, cast_to<int>(), std::move(owned));
    EXPECT_FALSE(f.has_value());
    ASSERT_TRUE(owned);  // refused before anything was moved from
    EXPECT_EQ(*owned, 7);
    gate.open();
    for (std::size_t i = 0; i < accepted.size(); ++i) EXPECT_EQ(accepted[i].get(), static_cast<int>(i));
}

TEST(BoundedQueue, MemoryStaysBoundedUnderLoad) {
    HandlerOptions o;
    o.batch_size = 8;
    o.queue_capacity = 64;
    auto h = load("double", o);
    std::atomic<std::size_t> max_queued{0};
    std::vector<std::thread> producers;
    std::atomic<long> sum{0};
    for (int p = 0; p < 4; ++p) {
        producers.emplace_back([&] {
            std::vector<std::future<int>> futures;
            for (int i = 0; i < 3000; ++i) {
                futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
                auto q = h.get_queue_stats().commit_queue_size;
                auto prev = max_queued.load();
                while (q > prev && !max_queued.compare_exchange_weak(prev, q)) {
                }
            }
            for (auto& f : futures) sum += f.get();
        });
    }
    for (auto& t : producers) t.join();
    EXPECT_LE(max_queued.load(), 64u);
    EXPECT_EQ(sum.load(), 4L * 2 * (2999L * 3000 / 2));
}

TEST(BatchDelay, NeverHoldsTheFirstItemLongerThanTheBound) {
    HandlerOptions o;
    o.batch_size = 64;
    o.max_batch_delay = std::chrono::milliseconds(50);
    auto h = load("batch_sizes", o);
    for (int round = 0; round < 5; ++round) {
        const auto t0 = std::chrono::steady_clock::now();
        auto f = h.queue_invoke(commit_value(1), cast_to<int>());
        EXPECT_EQ(f.get(), 1);  // nothing else came: a batch of one, sent at the deadline
        const auto waited = std::chrono::steady_clock::now() - t0;
        // The bound plus scheduling slack for a loaded 2-core CI machine; a batcher that
        // waited for the batch to fill would never return.
        EXPECT_LT(waited, o.max_batch_delay + std::chrono::seconds(2));
    }
}

// --- re-entrancy ----------------------------------------------------------------

TEST(Reentrancy, QueueInvokeFromInsideACallback) {
    auto h = load("double", 4);
    auto outer = h.queue_invoke(commit_value(5), [&](py::object o) {
        int v = o.cast<int>();
        return h.queue_invoke(commit_value(v), cast_to<int>());  // queued from the executor thread
    });
    auto inner = outer.get();
    ASSERT_TRUE(completes(inner));
    EXPECT_EQ(inner.get(), 20);
}

TEST(Reentrancy, CallbackWaitsForAnotherHandlersFuture) {
    auto a = load("identity", 4);
    auto b = load("double", 4);
    auto f = a.queue_invoke(commit_value(21), [&](py::object o) {
        // A plain get() here would deadlock: this callback holds the GIL that b's
        // executor needs. wait_and_get lets the GIL go while it waits.
        return wait_and_get(b.queue_invoke(commit_value(o.cast<int>()), cast_to<int>()));
    });
    ASSERT_TRUE(completes(f));
    EXPECT_EQ(f.get(), 42);
}

InvokeHandler* g_handler_b = nullptr;

}  // namespace
}  // namespace pyscheduler::test

PYBIND11_EMBEDDED_MODULE(pyscheduler_reentry, m) {
    m.def("call_b", [](int x) { return pyscheduler::test::g_handler_b->invoke<int>(x, 1000); });
}

namespace pyscheduler::test {
namespace {

TEST(Reentrancy, PythonOfHandlerACallsInvokeOnHandlerB) {
    auto b = load("add");
    g_handler_b = &b;
    auto a = load("via_cpp", 4);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 50; ++i) futures.push_back(a.queue_invoke(commit_value(i), cast_to<int>()));
    for (int i = 0; i < 50; ++i) EXPECT_EQ(futures[i].get(), i + 1000);
    g_handler_b = nullptr;
}

// --- churn and many handlers ---------------------------------------------------------

TEST(Stress, HandlerChurnWithInjectedFailures) {
    // 4 producers, each creating and destroying 50 handlers (200 in all) while the
    // others enqueue. Failures are injected in the commit (i % 13 == 0), the callback
    // (i % 17 == 0) and in Python (negative items, batch size 1 so exactly those fail).
    constexpr int kProducers = 4;
    constexpr int kRounds = 50;
    constexpr int kItems = 60;
    std::atomic<long> ok{0}, commit_failed{0}, callback_failed{0}, python_failed{0}, wrong{0};
    std::vector<std::thread> producers;
    for (int p = 0; p < kProducers; ++p) {
        producers.emplace_back([&] {
            for (int round = 0; round < kRounds; ++round) {
                std::vector<std::pair<int, std::future<int>>> futures;
                {
                    auto h = load("raise_on_negative_each", 1, 2);
                    for (int i = 0; i < kItems; ++i) {
                        const int value = i % 11 == 5 ? -i : i;
                        futures.emplace_back(value, h.queue_invoke(
                                                        [i, value] {
                                                            if (i % 13 == 0) throw std::out_of_range("commit");
                                                            return value;
                                                        },
                                                        [i](py::object o) {
                                                            if (i % 17 == 0) throw std::domain_error("callback");
                                                            return o.cast<int>();
                                                        }));
                    }
                }  // destroyed with work pending: drains
                for (auto& [value, f] : futures) {
                    try {
                        if (f.get() == 3 * value) {
                            ++ok;
                        } else {
                            ++wrong;
                        }
                    } catch (const std::out_of_range&) {
                        ++commit_failed;
                    } catch (const std::domain_error&) {
                        ++callback_failed;
                    } catch (const PythonError&) {
                        ++python_failed;
                    }
                }
            }
        });
    }
    for (auto& t : producers) t.join();
    // Expected counts, item by item, with the failures' precedence: commit first, then
    // Python (the item never reaches its callback), then the callback.
    long e_commit = 0, e_python = 0, e_callback = 0, e_ok = 0;
    for (int i = 0; i < kItems; ++i) {
        if (i % 13 == 0) {
            ++e_commit;
        } else if (i % 11 == 5) {
            ++e_python;
        } else if (i % 17 == 0) {
            ++e_callback;
        } else {
            ++e_ok;
        }
    }
    const long rounds = kProducers * kRounds;
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(commit_failed.load(), rounds * e_commit);
    EXPECT_EQ(python_failed.load(), rounds * e_python);
    EXPECT_EQ(callback_failed.load(), rounds * e_callback);
    EXPECT_EQ(ok.load(), rounds * e_ok);
}

TEST(Stress, TwoHundredHandlersIdleThenABurst) {
    constexpr int kHandlers = 200;
    std::vector<InvokeHandler> handlers;
    handlers.reserve(kHandlers);
    for (int i = 0; i < kHandlers; ++i) handlers.push_back(load("double", 1 + i % 16, 2));
    std::atomic<long> wrong{0};
    std::vector<std::thread> producers;
    for (int p = 0; p < 2; ++p) {
        producers.emplace_back([&, p] {
            std::vector<std::pair<int, std::future<int>>> futures;
            for (int i = 0; i < 25; ++i) {
                for (auto& h : handlers) {
                    int v = p * 100 + i;
                    futures.emplace_back(v, h.queue_invoke(commit_value(v), cast_to<int>()));
                }
            }
            for (auto& [v, f] : futures) {
                if (f.get() != 2 * v) ++wrong;
            }
        });
    }
    for (auto& t : producers) t.join();
    EXPECT_EQ(wrong.load(), 0);
    std::uint64_t completed = 0;
    for (auto& h : handlers) completed += h.get_queue_stats().completed;
    EXPECT_EQ(completed, 2u * 25u * kHandlers);
}

}  // namespace
}  // namespace pyscheduler::test
