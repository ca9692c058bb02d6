// HandlerOptions::workers: one handler served by a pool of executors, on the main
// interpreter (threads sharing its GIL) or in own-GIL sub-interpreters (CPython >= 3.12;
// those tests skip on 3.11). Batches go to whichever worker is free; each own-GIL
// worker has its own module state; every guarantee of a single executor holds.
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <ostream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler {
// How test names show the parameter (found by argument-dependent lookup).
inline void PrintTo(InterpreterKind kind, std::ostream* os) {
    *os << (kind == InterpreterKind::Main ? "Main" : "OwnGil");
}
}  // namespace pyscheduler

namespace pyscheduler::test {
namespace {

HandlerOptions pool(InterpreterKind kind, std::size_t workers, std::size_t batch_size = 1) {
    HandlerOptions o;
    o.batch_size = batch_size;
    o.prefetch_depth = 2;
    o.interpreter = kind;
    o.workers = workers;
    return o;
}

class WorkersOfEachKind : public ::testing::TestWithParam<InterpreterKind> {};

INSTANTIATE_TEST_SUITE_P(Kinds, WorkersOfEachKind,
                         ::testing::Values(InterpreterKind::Main, InterpreterKind::OwnGil),
                         [](const auto& info) { return ::testing::PrintToString(info.param); });

TEST(Workers, OptionsAreChecked) {
    HandlerOptions o;
    o.workers = 0;
    EXPECT_NE(what_of<std::invalid_argument>([&] { load("identity", o); }).find("workers must be at least 1"),
              std::string::npos);
    o.workers = 1025;
    EXPECT_NE(what_of<std::invalid_argument>([&] { load("identity", o); }).find("workers must not exceed 1024"),
              std::string::npos);
    o.workers = 3;
    auto h = load("identity", o);
    EXPECT_EQ(h.options().workers, 3u);
    EXPECT_EQ(h.get_queue_stats().workers.size(), 3u);
}

/// The names of this process's threads (Linux: /proc/self/task/<tid>/comm).
std::multiset<std::string> thread_names() {
    std::multiset<std::string> names;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream comm(task.path() / "comm");
        std::string name;
        if (std::getline(comm, name)) names.insert(name);
    }
    return names;
}

TEST(Workers, ThreadsAreNamedForTheirRoleUntilShutDown) {
    auto h = load("identity", pool(InterpreterKind::Main, 2));
    auto names = thread_names();
    EXPECT_EQ(names.count("pys-commit"), 1u);
    EXPECT_EQ(names.count("pys-exec-0"), 1u);
    EXPECT_EQ(names.count("pys-exec-1"), 1u);
    h.shutdown(ShutdownMode::Drain);
    names = thread_names();
    EXPECT_EQ(names.count("pys-commit"), 0u);
    EXPECT_EQ(names.count("pys-exec-0"), 0u);
}

// One batch stays in Python (blocked on a pipe); the other worker runs everything
// queued behind it. A single executor could not: the batch would hold up the rest.
TEST_P(WorkersOfEachKind, OneSlowBatchHoldsUpNothingThatAnotherWorkerCanRun) {
    PYSCHEDULER_REQUIRE_OWN_GIL(GetParam());
    auto h = load_own_gil_module("read_or_echo", pool(GetParam(), 2));
    Pipe pipe;
    auto slow = h.queue_invoke([fd = pipe.read_end()] { return fd; }, cast_to<int>());
    std::vector<std::future<int>> fast;
    for (int i = 1; i <= 50; ++i) fast.push_back(h.queue_invoke([i] { return -i; }, cast_to<int>()));
    for (int i = 1; i <= 50; ++i) {
        ASSERT_TRUE(completes(fast[i - 1]));
        EXPECT_EQ(fast[i - 1].get(), -i);
    }
    EXPECT_EQ(slow.wait_for(std::chrono::seconds(0)), std::future_status::timeout) << "still blocked on the pipe";
    pipe.release(42);
    ASSERT_TRUE(completes(slow));
    EXPECT_EQ(slow.get(), 42);

    const QueueStats s = h.get_queue_stats();
    ASSERT_EQ(s.workers.size(), 2u);
    EXPECT_EQ(s.workers[0].items + s.workers[1].items, 51u);
    EXPECT_EQ(s.workers[0].batches + s.workers[1].batches, 51u);  // batch_size 1
    EXPECT_GE(s.workers[0].batches, 1u) << "both workers ran batches";
    EXPECT_GE(s.workers[1].batches, 1u);
    EXPECT_GT(s.workers[0].busy_ns + s.workers[1].busy_ns, 0u);
    EXPECT_EQ(s.completed, 51u);
}

TEST_P(WorkersOfEachKind, DestructionDrainsEveryWorker) {
    PYSCHEDULER_REQUIRE_OWN_GIL(GetParam());
    std::vector<std::future<long>> futures;
    {
        auto h = load_own_gil_module("squares", pool(GetParam(), 3, 4));
        for (int i = 0; i < 3000; ++i) futures.push_back(h.queue_invoke([i] { return i; }, cast_to<long>()));
    }
    for (int i = 0; i < 3000; ++i) {
        ASSERT_EQ(futures[i].wait_for(std::chrono::seconds(0)), std::future_status::ready);
        EXPECT_EQ(futures[i].get(), static_cast<long>(i) * i);
    }
}

// A batch that raises fails its own items; the worker that ran it, and the others,
// keep serving.
TEST_P(WorkersOfEachKind, AFailingBatchLeavesTheWorkersRunning) {
    PYSCHEDULER_REQUIRE_OWN_GIL(GetParam());
    auto h = load_own_gil_module("fail_if_negative", pool(GetParam(), 2));
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 300; ++i) {
        futures.push_back(h.queue_invoke([i] { return i % 3 == 0 ? -i - 1 : i; }, cast_to<int>()));
    }
    int failed = 0;
    for (int i = 0; i < 300; ++i) {
        if (i % 3 == 0) {
            EXPECT_THROW(futures[i].get(), PythonError);
            ++failed;
        } else {
            EXPECT_EQ(futures[i].get(), i);
        }
    }
    const QueueStats s = h.get_queue_stats();
    EXPECT_EQ(s.failed, static_cast<std::uint64_t>(failed));
    EXPECT_EQ(s.completed, static_cast<std::uint64_t>(300 - failed));
    EXPECT_EQ(s.workers[0].items + s.workers[1].items, 300u);
}

TEST_P(WorkersOfEachKind, ShutdownCancelRacingProducersLosesNothing) {
    PYSCHEDULER_REQUIRE_OWN_GIL(GetParam());
    auto h = load_own_gil_module("squares", pool(GetParam(), 3, 2));
    const RaceCounts r = shutdown_while_producers_race(h, 2000, [](int i) { return static_cast<long>(i) * i; });
    EXPECT_EQ(r.wrong, 0);
    EXPECT_EQ(r.values + r.cancelled, 4 * 2000);
    const QueueStats s = h.get_queue_stats();
    std::uint64_t by_workers = 0;
    for (const WorkerStats& w : s.workers) by_workers += w.items;
    EXPECT_EQ(by_workers, s.completed + s.failed) << "every item that reached the executors was counted once";
}

// 40 pool handlers, created, used and destroyed by 4 threads at once.
TEST_P(WorkersOfEachKind, FortyPoolHandlersCreatedAndDestroyedFromFourThreads) {
    PYSCHEDULER_REQUIRE_OWN_GIL(GetParam());
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int round = 0; round < 10; ++round) {
                auto h = load_own_gil_module("squares", pool(GetParam(), 2, 2));
                std::vector<std::future<long>> f;
                for (int i = 0; i < 20; ++i) f.push_back(h.queue_invoke([i, t] { return i + t; }, cast_to<long>()));
                for (int i = 0; i < 20; ++i) {
                    if (f[i].get() != static_cast<long>(i + t) * (i + t)) ++wrong;
                }
                if (h.invoke<std::vector<long>>(std::vector<int>{t}) != std::vector<long>{static_cast<long>(t) * t}) {
                    ++wrong;
                }
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(wrong.load(), 0);
}

// Main workers share one GIL: they are separate executor threads, and Python sees
// them as such.
TEST(Workers, MainWorkersAreThreadsOfTheMainInterpreter) {
    auto id_main = python().loadPythonModule("pyscheduler_test_own_gil", "interpreter_id");
    auto via = load_own_gil_module("interpreter_id", pool(InterpreterKind::Main, 2));
    EXPECT_EQ(via.invoke<long>(), id_main.invoke<long>()) << "invoke on a Main pool runs in the main interpreter";
    Pipe pipe;
    auto blocker = load_own_gil_module("read_or_echo", pool(InterpreterKind::Main, 2));
    auto held = blocker.queue_invoke([fd = pipe.read_end()] { return fd; }, cast_to<int>());
    // While one worker of `blocker` is in Python, the other still serves items.
    EXPECT_EQ(blocker.queue_invoke([] { return -7; }, cast_to<int>()).get(), -7);
    pipe.release(1);
    EXPECT_EQ(held.get(), 1);
}

TEST(Workers, EachOwnGilWorkerHasItsOwnInterpreterAndModuleState) {
    PYSCHEDULER_REQUIRE_OWN_GIL(InterpreterKind::OwnGil);
    constexpr std::size_t kWorkers = 3;
    auto h = load_own_gil_module("bump_here", pool(InterpreterKind::OwnGil, kWorkers));
    std::vector<std::future<std::vector<long>>> futures;
    for (int i = 0; i < 300; ++i) futures.push_back(h.queue_invoke([] { return 0; }, cast_to<std::vector<long>>()));
    std::map<long, std::vector<long>> seen_by;  // interpreter id -> the counts its module returned
    for (auto& f : futures) {
        const auto r = f.get();
        seen_by[r.at(0)].push_back(r.at(1));
    }
    EXPECT_LE(seen_by.size(), kWorkers);
    std::size_t total = 0;
    for (auto& [id, counts] : seen_by) {
        EXPECT_NE(id, 0) << "not the main interpreter";
        std::sort(counts.begin(), counts.end());
        for (std::size_t k = 0; k < counts.size(); ++k) {
            EXPECT_EQ(counts[k], static_cast<long>(k + 1)) << "each interpreter counts its own items, 1, 2, 3...";
        }
        total += counts.size();
    }
    EXPECT_EQ(total, 300u);

    // Synchronous invoke: each worker's interpreter in turn.
    auto ids = load_own_gil_module("interpreter_id", pool(InterpreterKind::OwnGil, kWorkers));
    std::vector<long> round;
    for (std::size_t i = 0; i < 2 * kWorkers; ++i) round.push_back(ids.invoke<long>());
    EXPECT_EQ(std::set<long>(round.begin(), round.end()).size(), kWorkers);
    for (std::size_t i = 0; i < kWorkers; ++i) EXPECT_EQ(round[i], round[i + kWorkers]) << "round robin";
    std::set<long> pipeline_ids;
    for (std::size_t i = 0; i < 30; ++i) {
        pipeline_ids.insert(ids.queue_invoke([] { return 0; }, cast_to<long>()).get());
    }
    for (long id : pipeline_ids) EXPECT_EQ(std::count(round.begin(), round.end(), id), 2) << "the workers' own";
}

TEST(Workers, OwnGilPoolRefusesCommitsThatReturnPythonObjects) {
    PYSCHEDULER_REQUIRE_OWN_GIL(InterpreterKind::OwnGil);
    auto h = load_own_gil_module("squares", pool(InterpreterKind::OwnGil, 2));
    const std::string what =
        what_of<std::invalid_argument>([&] { h.queue_invoke([] { return py::int_(3); }, cast_to<long>()); });
    EXPECT_NE(what.find("2 own-GIL workers"), std::string::npos) << what;
    EXPECT_NE(what.find("must return C++ values"), std::string::npos) << what;
    EXPECT_THROW(h.try_queue_invoke([] { return py::int_(3); }, cast_to<long>()), std::invalid_argument);
    EXPECT_EQ(h.get_queue_stats().total_enqueued, 0u) << "refused before anything was queued";
    EXPECT_EQ(h.queue_invoke([] { return 3; }, cast_to<long>()).get(), 9);

    auto single = load_own_gil_module("squares", pool(InterpreterKind::OwnGil, 1));
    EXPECT_EQ(single.queue_invoke([] { return py::int_(4); }, cast_to<long>()).get(), 16)
        << "one own-GIL worker keeps Python-object commits (one interpreter)";
}

}  // namespace
}  // namespace pyscheduler::test
