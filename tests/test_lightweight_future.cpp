// LightweightFuturePolicy: queue_invoke returns pyscheduler::Future<R> and the
// pipeline keeps every guarantee it gives with std::future: values to the right
// items from many producers, errors to the affected items, Cancel and refusals,
// bounded queues, futures dropped unread, waits from inside callbacks, and handlers
// of both policies side by side.
#include <atomic>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

using Light = LightweightFuturePolicy;

TEST(LightweightFuture, ManyProducersBesideADefaultPolicyHandler) {
    auto light = load<Light>("double", 16, 4);
    auto standard = load("double", 16, 4);  // the same function, std::future, at the same time
    static_assert(std::is_same_v<decltype(light.queue_invoke(commit_value(1), cast_to<int>())), Future<int>>);
    static_assert(std::is_same_v<decltype(standard.queue_invoke(commit_value(1), cast_to<int>())), std::future<int>>);
    constexpr int kProducers = 4, kItems = 5000;
    std::atomic<int> wrong{0};
    std::vector<std::thread> producers;
    for (int p = 0; p < kProducers; ++p) {
        producers.emplace_back([&, p] {
            std::vector<Future<int>> mine;
            std::vector<std::future<int>> theirs;
            for (int i = 0; i < kItems; ++i) {
                const int v = p * kItems + i;
                mine.push_back(light.queue_invoke(commit_value(v), cast_to<int>()));
                if (i % 4 == 0) theirs.push_back(standard.queue_invoke(commit_value(v), cast_to<int>()));
            }
            for (int i = 0; i < kItems; ++i) wrong += mine[i].get() != 2 * (p * kItems + i);
            for (std::size_t i = 0; i < theirs.size(); ++i) {
                wrong += theirs[i].get() != 2 * (p * kItems + static_cast<int>(i) * 4);
            }
        });
    }
    for (auto& t : producers) t.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(light.get_queue_stats().completed, std::uint64_t{kProducers * kItems});
}

TEST(LightweightFuture, VoidMoveOnlyAndPythonObjectCommits) {
    auto h = load<Light>("identity", 4);
    std::atomic<int> seen{0};
    Future<void> done = h.queue_invoke(commit_value(3), [&](py::object o) { seen += o.cast<int>(); });
    Future<std::unique_ptr<int>> boxed =
        h.queue_invoke(commit_value(4), [](py::object o) { return std::make_unique<int>(o.cast<int>()); });
    Future<std::string> text = h.queue_invoke([] { return py::str("from a GIL commit"); }, cast_to<std::string>());
    done.get();
    EXPECT_EQ(seen.load(), 3);
    EXPECT_EQ(*boxed.get(), 4);
    EXPECT_EQ(text.get(), "from a GIL commit");
}

TEST(LightweightFuture, ErrorsReachExactlyTheAffectedFutures) {
    auto h = load<Light>("identity", 8);
    std::vector<Future<int>> futures;
    for (int i = 0; i < 40; ++i) {
        futures.push_back(h.queue_invoke(
            [i] {
                if (i % 7 == 3) throw std::out_of_range("commit refused " + std::to_string(i));
                return i;
            },
            [](py::object o) {
                const int v = o.cast<int>();
                if (v % 5 == 0) throw std::domain_error("callback refused");
                return v;
            }));
    }
    for (int i = 0; i < 40; ++i) {
        if (i % 7 == 3) {
            EXPECT_EQ(what_of<std::out_of_range>([&] { futures[i].get(); }), "commit refused " + std::to_string(i));
        } else if (i % 5 == 0) {
            EXPECT_THROW(futures[i].get(), std::domain_error);
        } else {
            EXPECT_EQ(futures[i].get(), i);
        }
    }

    HandlerOptions o;
    o.batch_size = 4;
    o.max_batch_delay = std::chrono::seconds(5);
    auto raising = load<Light>("always_raise", o);
    std::vector<Future<int>> batch;
    for (int i = 0; i < 4; ++i) batch.push_back(raising.queue_invoke(commit_value(i), cast_to<int>()));
    for (auto& f : batch) {
        try {
            f.get();
            ADD_FAILURE() << "did not throw";
        } catch (const PythonError& e) {
            EXPECT_EQ(e.type_name(), "ValueError");
            EXPECT_EQ(e.message(), "refusing a batch of 4 items");
        }
    }
}

TEST(LightweightFuture, CancelAndRefusalComplete) {
    auto h = load<Light>("gated_identity", 1, 1);
    Gate gate;
    std::vector<Future<int>> futures;
    for (int i = 0; i < 500; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    gate.wait_until_entered();  // item 0 is inside Python now
    auto stopper = std::async(std::launch::async, [&] { h.shutdown(ShutdownMode::Cancel); });
    while (!h.is_shut_down()) std::this_thread::yield();
    gate.open();
    ASSERT_EQ(stopper.wait_for(kNoHang), std::future_status::ready);
    EXPECT_EQ(futures[0].get(), 0);
    for (int i = 1; i < 500; ++i) EXPECT_THROW(futures[i].get(), Cancelled);
    auto late = h.queue_invoke(commit_value(1), cast_to<int>());
    EXPECT_NE(what_of<Cancelled>([&] { late.get(); }).find("shut down"), std::string::npos);
}

TEST(LightweightFuture, TryQueueInvokeOnAFullBoundedQueue) {
    HandlerOptions o;
    o.queue_capacity = 2;
    auto h = load<Light>("gated_identity", o);
    Gate gate;
    std::vector<Future<int>> futures;
    futures.push_back(h.queue_invoke(commit_value(0), cast_to<int>()));
    gate.wait_until_entered();  // item 0 holds the executor; the next ones stay queued
    std::optional<Future<int>> more;
    for (int i = 1; (more = h.try_queue_invoke(commit_value(i), cast_to<int>())); ++i) {
        static_assert(std::is_same_v<decltype(more), std::optional<Future<int>>>);
        futures.push_back(std::move(*more));
        ASSERT_LT(i, 100) << "a queue of capacity 2 never refused";
    }
    gate.open();
    for (std::size_t i = 0; i < futures.size(); ++i) EXPECT_EQ(futures[i].get(), static_cast<int>(i));
}

TEST(LightweightFuture, DroppedFuturesAndDestructionDrain) {
    std::atomic<int> callbacks{0};
    {
        auto h = load<Light>("double", 32, 2);
        for (int i = 0; i < 20000; ++i) {
            (void)h.queue_invoke(commit_value(i), [&](py::object) { ++callbacks; });  // dropped at once
        }
    }  // drains
    EXPECT_EQ(callbacks.load(), 20000);
}

TEST(LightweightFuture, CallbackWaitsForAnotherHandlersFuture) {
    auto a = load<Light>("identity", 4);
    auto b = load<Light>("double", 4);
    auto f = a.queue_invoke(commit_value(21), [&](py::object o) {
        return wait_and_get(b.queue_invoke(commit_value(o.cast<int>()), cast_to<int>()));  // GIL let go
    });
    ASSERT_TRUE(completes(f));
    EXPECT_EQ(f.get(), 42);
}

}  // namespace
}  // namespace pyscheduler::test
