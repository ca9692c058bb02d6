// Groups: items of any handlers tracked as one unit (InvokeHandler::map, ItemOptions::group):
// progress, progress callbacks, wait, completion order, cancel.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

TEST(Group, MapGivesResultsInInputOrderAndEveryIndexOnceInCompletionOrder) {
    auto h = load("double", 16, 2);
    std::vector<int> inputs(1000);
    for (int i = 0; i < 1000; ++i) inputs[i] = i;
    Mapped<int> m = h.map(inputs, [](int x) { return x; }, cast_to<int>());
    ASSERT_EQ(m.futures.size(), 1000u);
    std::set<std::size_t> seen;
    while (auto i = m.group.next_completed()) {
        EXPECT_TRUE(seen.insert(*i).second) << "index " << *i << " twice";
        EXPECT_TRUE(m.futures[*i].is_ready()) << "reported before its future was ready";
    }
    EXPECT_EQ(seen.size(), 1000u);
    m.group.wait();
    const GroupProgress p = m.group.progress();
    EXPECT_EQ(p.done, 1000u);
    EXPECT_EQ(p.failed + p.cancelled, 0u);
    EXPECT_EQ(p.total, 1000u);
    EXPECT_TRUE(p.finished());
    for (int i = 0; i < 1000; ++i) EXPECT_EQ(m.futures[i].get(), 2 * i);
}

TEST(Group, FailuresAreCountedAndEachErrorStaysWithItsItem) {
    auto h = load("raise_on_negative_each", 1);
    std::vector<int> inputs{1, -1, 2, -2, 3};
    auto m = h.map(inputs, [](int x) { return x; }, cast_to<int>());
    m.group.wait();
    const GroupProgress p = m.group.progress();
    EXPECT_EQ(p.done, 3u);
    EXPECT_EQ(p.failed, 2u);
    EXPECT_EQ(m.futures[0].get(), 3);
    EXPECT_THROW(m.futures[1].get(), PythonError);
    EXPECT_EQ(m.futures[4].get(), 9);
}

// The progress callback: counts never go back, exactly one call sees the group
// finished, and it is the last; wait() returns after it.
TEST(Group, ProgressCallbackEndsWithOneFinishedReport) {
    auto h = load("identity", 8, 2);
    Group g;
    std::mutex mutex;
    std::vector<GroupProgress> reports;
    std::atomic<bool> wait_returned{false};
    std::atomic<int> after_wait{0};
    g.on_progress(
        [&](const GroupProgress& p) {
            if (wait_returned) ++after_wait;
            std::lock_guard<std::mutex> lock(mutex);
            reports.push_back(p);
        },
        std::chrono::milliseconds(0));
    std::vector<std::future<int>> futures;
    ItemOptions item;
    item.group = &g;
    h.pause();  // every member joins before any completes: the group finishes once
    for (int i = 0; i < 3000; ++i) futures.push_back(h.queue_invoke(item, [i] { return i; }, cast_to<int>()));
    h.resume();
    g.wait();
    wait_returned = true;
    std::lock_guard<std::mutex> lock(mutex);
    ASSERT_FALSE(reports.empty());
    EXPECT_TRUE(reports.back().finished());
    EXPECT_EQ(reports.back().done, 3000u);
    EXPECT_EQ(std::count_if(reports.begin(), reports.end(), [](const GroupProgress& p) { return p.finished(); }), 1);
    for (std::size_t i = 1; i < reports.size(); ++i) {
        EXPECT_GE(reports[i].done, reports[i - 1].done) << "progress went back at report " << i;
    }
    EXPECT_EQ(after_wait.load(), 0);
}

TEST(Group, ProgressCallbackIsRateLimited) {
    auto h = load("identity", 1);
    Group g;
    std::atomic<int> calls{0};
    g.on_progress([&](const GroupProgress&) { ++calls; }, std::chrono::hours(1));
    ItemOptions item;
    item.group = &g;
    std::vector<std::future<int>> futures;
    h.pause();  // every member joins before any completes: the group finishes once
    for (int i = 0; i < 500; ++i) futures.push_back(h.queue_invoke(item, [i] { return i; }, cast_to<int>()));
    h.resume();
    g.wait();
    EXPECT_LE(calls.load(), 2) << "the first completion, then only the finishing report";
    EXPECT_GE(calls.load(), 1);
}

// Two groups on one handler that is blocked; one is cancelled half-way through
// queueing: all of its items fail with Cancelled without running, the other group's
// items and the blocking item complete untouched.
TEST(Group, CancelledGroupLeavesTheOtherGroupAlone) {
    auto h = load_own_gil_module("read_or_echo");
    Pipe pipe;
    auto blocker = h.queue_invoke([fd = pipe.read_end()] { return fd; }, cast_to<int>());
    Group a, b;
    ItemOptions in_a, in_b;
    in_a.group = &a;
    in_b.group = &b;
    std::atomic<int> a_callbacks{0};
    std::vector<std::future<int>> fa, fb;
    for (int i = 1; i <= 1000; ++i) {
        if (i == 500) a.cancel();
        fa.push_back(h.queue_invoke(in_a, [i] { return -i; }, [&](py::object r) {
            ++a_callbacks;
            return r.cast<int>();
        }));
        fb.push_back(h.queue_invoke(in_b, [i] { return -i; }, cast_to<int>()));
    }
    EXPECT_TRUE(a.is_cancelled());
    pipe.release(4);
    ASSERT_TRUE(a.wait_for(kNoHang));
    ASSERT_TRUE(b.wait_for(kNoHang));
    EXPECT_EQ(blocker.get(), 4);
    for (auto& f : fa) EXPECT_THROW(f.get(), Cancelled);
    for (int i = 1; i <= 1000; ++i) EXPECT_EQ(fb[i - 1].get(), -i);
    EXPECT_EQ(a_callbacks.load(), 0);
    EXPECT_EQ(a.progress().cancelled, 1000u);
    EXPECT_EQ(b.progress().done, 1000u);
}

// A group spans handlers and outlives nothing: the Group object may go first.
TEST(Group, SpansHandlersAndMayBeDroppedFirst) {
    auto h1 = load("identity", 4);
    auto h2 = load("double", 4);
    std::vector<Future<long>> futures;
    GroupProgress seen;
    {
        Group g;
        ItemOptions item;
        item.group = &g;
        for (long i = 0; i < 100; ++i) {
            futures.push_back(h1.submit(item, [i] { return i; }, cast_to<long>()));
            futures.push_back(h2.submit(item, [i] { return i; }, cast_to<long>()));
        }
        g.wait();
        seen = g.progress();
    }
    EXPECT_EQ(seen.total, 200u);
    EXPECT_EQ(seen.done, 200u);
    {
        ItemOptions item;
        Group g;
        item.group = &g;
        for (long i = 0; i < 100; ++i) futures.push_back(h1.submit(item, [i] { return i; }, cast_to<long>()));
    }  // g destroyed with items in flight
    for (auto& f : futures) ASSERT_TRUE(completes(f));
}

// map stopped half-way by a bad input: the items queued so far run, and nothing hangs
// or leaks (the members that never joined leave the group).
TEST(Group, MapStoppedByABadInputLosesNothing) {
    auto h = load("identity", 4);
    std::vector<SharedFuture<long>> inputs;
    for (long i = 0; i < 10; ++i) inputs.push_back(h.submit([i] { return i; }, cast_to<long>()).share());
    inputs.insert(inputs.begin() + 5, SharedFuture<long>());  // no state
    EXPECT_THROW(h.map(inputs, [](const long& v) { return v; }, cast_to<long>()), std::invalid_argument);
    for (long i = 0; i < 10; ++i) EXPECT_EQ(inputs[i < 5 ? i : i + 1].get(), i);
}

// Threads add members to one group on two handlers while another consumes the
// completion order (TSan).
TEST(GroupStress, ManyThreadsOneGroup) {
    auto h1 = load("identity", 8);
    auto h2 = load("identity", 1);
    Group g;
    constexpr int kThreads = 4, kEach = 2000;
    std::atomic<int> added{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            ItemOptions item;
            item.group = &g;
            std::vector<Future<int>> mine;
            for (int i = 0; i < kEach; ++i) {
                auto& h = (i + t) % 2 ? h1 : h2;
                mine.push_back(h.submit(item, [i] { return i; }, cast_to<int>()));
                ++added;
            }
            for (auto& f : mine) f.wait();
        });
    }
    for (auto& th : threads) th.join();
    std::set<std::size_t> seen;
    while (auto i = g.next_completed()) seen.insert(*i);
    EXPECT_EQ(seen.size(), static_cast<std::size_t>(kThreads * kEach));
    EXPECT_EQ(g.progress().done, static_cast<std::size_t>(kThreads * kEach));
}

}  // namespace
}  // namespace pyscheduler::test
