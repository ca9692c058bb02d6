// queue_invoke: values, batching, prefetch, commit flavours, and errors per item.
#include <chrono>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

TEST(QueueInvoke, DeliversResultIToItemI) {
    auto h = load("double", 16, 2);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 1000; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    for (int i = 0; i < 1000; ++i) {
        ASSERT_TRUE(completes(futures[i]));
        EXPECT_EQ(futures[i].get(), 2 * i);
    }
}

TEST(QueueInvoke, ArgumentsArePassedToTheCommit) {
    auto h = load("identity", 4);
    auto f = h.queue_invoke([](int a, const std::string& b) { return b + std::to_string(a); },
                            cast_to<std::string>(), 7, std::string("x"));
    EXPECT_EQ(f.get(), "x7");
}

TEST(QueueInvoke, VoidCallback) {
    auto h = load("identity");
    std::atomic<int> sum{0};
    std::vector<std::future<void>> futures;
    for (int i = 1; i <= 10; ++i) {
        futures.push_back(h.queue_invoke(commit_value(i), [&](py::object o) { sum += o.cast<int>(); }));
    }
    for (auto& f : futures) f.get();
    EXPECT_EQ(sum.load(), 55);
}

TEST(QueueInvoke, MoveOnlyArgumentsAndCaptures) {
    auto h = load("identity", 2);
    auto owned = std::make_unique<int>(41);
    auto bonus = std::make_unique<int>(1);
    auto f = h.queue_invoke([](std::unique_ptr<int> p) { return *p; },
                            [b = std::move(bonus)](py::object o) { return o.cast<int>() + *b; }, std::move(owned));
    EXPECT_EQ(f.get(), 42);
}

TEST(QueueInvoke, MoveOnlyResult) {
    auto h = load("identity");
    auto f = h.queue_invoke(commit_value(5), [](py::object o) { return std::make_unique<int>(o.cast<int>()); });
    EXPECT_EQ(*f.get(), 5);
}

TEST(QueueInvoke, CommitReturningPythonObjectRunsWithTheGil) {
    auto h = load("double", 8);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 100; ++i) {
        futures.push_back(h.queue_invoke(
            [i] {
                EXPECT_TRUE(PyGILState_Check());
                return py::int_(i);
            },
            cast_to<int>()));
    }
    for (int i = 0; i < 100; ++i) EXPECT_EQ(futures[i].get(), 2 * i);
}

TEST(QueueInvoke, CommitReturningCppValueRunsWithoutTheGil) {
    auto h = load("sum_lists", 8);
    auto f = h.queue_invoke(
        [] {
            EXPECT_FALSE(detail::this_thread_holds_gil());
            return std::vector<int>{1, 2, 3};
        },
        cast_to<int>());
    EXPECT_EQ(f.get(), 6);
}

TEST(QueueInvoke, TupleAndOtherSequencesAreAccepted) {
    auto tuple = load("as_tuple_plus_one", 4);
    EXPECT_EQ(tuple.queue_invoke(commit_value(1), cast_to<int>()).get(), 2);
    auto range = load("return_range", 4);
    EXPECT_EQ(range.queue_invoke(commit_value(9), cast_to<int>()).get(), 0);
}

TEST(QueueInvoke, BatchesNeverExceedBatchSize) {
    auto h = load("batch_sizes", 8, 4);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 2000; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    for (auto& f : futures) {
        int size = f.get();
        EXPECT_GE(size, 1);
        EXPECT_LE(size, 8);
    }
}

TEST(QueueInvoke, MaxBatchDelayFillsTheBatch) {
    HandlerOptions o;
    o.batch_size = 8;
    o.max_batch_delay = std::chrono::seconds(5);
    auto h = load("batch_sizes", o);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 8; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    // The batch fills long before the delay runs out, and then runs at once.
    for (auto& f : futures) EXPECT_EQ(f.get(), 8);
}

TEST(QueueInvoke, PrefetchIsBoundedByBatchSizeTimesDepth) {
    constexpr std::size_t kBatch = 4;
    constexpr std::size_t kDepth = 2;
    auto h = load("identity", kBatch, kDepth);
    std::atomic<long> in_flight{0};
    std::atomic<long> max_in_flight{0};
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 3000; ++i) {
        futures.push_back(h.queue_invoke(
            [&, i] {
                long now = ++in_flight;
                long prev = max_in_flight.load();
                while (now > prev && !max_in_flight.compare_exchange_weak(prev, now)) {
                }
                return i;
            },
            [&](py::object o) {
                --in_flight;
                return o.cast<int>();
            }));
    }
    for (int i = 0; i < 3000; ++i) EXPECT_EQ(futures[i].get(), i);
    // Committed but not yet delivered: at most batch*depth waiting plus one batch running.
    EXPECT_LE(max_in_flight.load(), static_cast<long>(kBatch * (kDepth + 1)));
    EXPECT_GE(max_in_flight.load(), 1);
}

/// A policy written out in full, not derived from DefaultPolicy, with only the members
/// policies had before `future`, `idle_yields` and `idle_adaptive_us`: it still
/// compiles and gets their defaults (std::future; DefaultPolicy's yields and adaptive
/// polling).
struct HandWrittenPolicy {
    using clock = std::chrono::steady_clock;
    static constexpr bool collect_stats = false;
    static constexpr double stats_ema_weight = 0.5;
    static constexpr int idle_spins = 100;
};
static_assert(detail::idle_yields_of<HandWrittenPolicy>() == DefaultPolicy::idle_yields);
static_assert(detail::idle_adaptive_us_of<HandWrittenPolicy>() == DefaultPolicy::idle_adaptive_us);
static_assert(std::is_same_v<BasicInvokeHandler<HandWrittenPolicy>::future<int>, std::future<int>>);

TEST(QueueInvoke, AHandWrittenPolicyWithOnlyTheOlderMembersWorks) {
    auto h = load<HandWrittenPolicy>("double", 8, 2);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 2000; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    for (int i = 0; i < 2000; ++i) EXPECT_EQ(futures[i].get(), 2 * i);
    const auto s = h.get_queue_stats();
    EXPECT_EQ(s.completed, 2000u);
    EXPECT_EQ(s.execute_ns_per_batch_ema, 0.0);  // collect_stats = false: batches are not timed
}

TEST(QueueInvoke, StatsCountEveryItem) {
    auto h = load("raise_if_negative", 1);
    std::vector<std::future<int>> futures;
    for (int i = -10; i < 90; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    int failed = 0;
    for (auto& f : futures) {
        try {
            f.get();
        } catch (const PythonError&) {
            ++failed;
        }
    }
    EXPECT_EQ(failed, 10);
    auto s = h.get_queue_stats();
    EXPECT_EQ(s.total_enqueued, 100u);
    EXPECT_EQ(s.completed, 90u);
    EXPECT_EQ(s.failed, 10u);
    EXPECT_EQ(s.commit_queue_size, 0u);
    EXPECT_EQ(s.execute_queue_size, 0u);
    EXPECT_GE(s.execute_batch_size_ema, 1.0);
    EXPECT_GT(s.execute_ns_per_batch_ema, 0.0);
    EXPECT_GE(s.commit_batch_size_ema, 1.0);
    EXPECT_GT(s.commit_ns_per_batch_ema, 0.0);
}

// --- errors, each on exactly the affected futures ---------------------------

TEST(QueueInvokeErrors, CommitThrowsFailsOnlyThatItem) {
    auto h = load("identity", 8);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 50; ++i) {
        futures.push_back(h.queue_invoke(
            [i] {
                if (i % 7 == 3) throw std::out_of_range("commit refused " + std::to_string(i));
                return i;
            },
            cast_to<int>()));
    }
    for (int i = 0; i < 50; ++i) {
        if (i % 7 == 3) {
            auto what = what_of<std::out_of_range>([&] { futures[i].get(); });
            EXPECT_EQ(what, "commit refused " + std::to_string(i));
        } else {
            EXPECT_EQ(futures[i].get(), i);
        }
    }
}

TEST(QueueInvokeErrors, CallbackThrowsFailsOnlyThatItem) {
    auto h = load("identity", 8);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 50; ++i) {
        futures.push_back(h.queue_invoke(commit_value(i), [](py::object o) {
            int v = o.cast<int>();
            if (v % 5 == 0) throw std::domain_error("callback refused");
            return v;
        }));
    }
    for (int i = 0; i < 50; ++i) {
        if (i % 5 == 0) {
            EXPECT_THROW(futures[i].get(), std::domain_error);
        } else {
            EXPECT_EQ(futures[i].get(), i);
        }
    }
}

TEST(QueueInvokeErrors, CallbackCastFailureFailsOnlyThatItem) {
    auto h = load("stringify", 4);
    auto bad = h.queue_invoke(commit_value(1), cast_to<int>());  // "1" is not an int
    auto good = h.queue_invoke(commit_value(2), cast_to<std::string>());
    EXPECT_THROW(bad.get(), py::cast_error);
    EXPECT_EQ(good.get(), "2");
}

TEST(QueueInvokeErrors, PythonRaisingFailsTheWholeBatchWithPythonError) {
    HandlerOptions o;
    o.batch_size = 4;
    o.max_batch_delay = std::chrono::seconds(5);
    auto h = load("always_raise", o);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 4; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    for (auto& f : futures) {
        try {
            f.get();
            FAIL() << "did not throw";
        } catch (const PythonError& e) {
            EXPECT_EQ(e.type_name(), "ValueError");
            EXPECT_EQ(e.message(), "refusing a batch of 4 items");
            EXPECT_NE(e.traceback().find("always_raise"), std::string::npos);
        }
    }
}

TEST(QueueInvokeErrors, OtherBatchesAreUnaffected) {
    auto h = load("raise_if_negative", 1);
    std::vector<std::future<int>> futures;
    for (int i = -20; i < 20; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    for (int i = -20; i < 20; ++i) {
        auto& f = futures[i + 20];
        if (i < 0) {
            EXPECT_THROW(f.get(), PythonError);
        } else {
            EXPECT_EQ(f.get(), i);
        }
    }
}

TEST(QueueInvokeErrors, PythonErrorInAGilCommitFailsOnlyThatItem) {
    auto h = load("identity", 4);
    auto bad = h.queue_invoke([] { return py::module_::import("no_such_module_in_commit"); },
                              [](py::object) { return 0; });
    auto good = h.queue_invoke(commit_value(3), cast_to<int>());
    try {
        bad.get();
        FAIL() << "did not throw";
    } catch (const PythonError& e) {
        EXPECT_EQ(e.type_name(), "ModuleNotFoundError");
        EXPECT_NE(std::string(e.what()).find("commit function of pyscheduler_test_funcs.identity"), std::string::npos)
            << e.what();
    }
    EXPECT_EQ(good.get(), 3);
}

struct NotConvertible {
    int x;
};

TEST(QueueInvokeErrors, UnconvertibleCommittedValueFailsOnlyThatItem) {
    HandlerOptions o;
    o.batch_size = 2;
    o.max_batch_delay = std::chrono::seconds(5);
    auto h = load("batch_sizes", o);
    auto bad = h.queue_invoke([] { return NotConvertible{1}; }, cast_to<int>());
    auto good = h.queue_invoke(commit_value(1), cast_to<int>());
    auto what = what_of<py::cast_error>([&] { bad.get(); });
    EXPECT_NE(what.find("NotConvertible"), std::string::npos) << what;
    EXPECT_EQ(good.get(), 1);  // the failed item is left out of the Python call
}

void expect_result_error(const std::string& function, const std::string& expected_fragment) {
    HandlerOptions o;
    o.batch_size = 4;
    o.max_batch_delay = std::chrono::seconds(5);
    auto h = load(function, o);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 4; ++i) futures.push_back(h.queue_invoke(commit_value(i), cast_to<int>()));
    for (auto& f : futures) {
        auto what = what_of<ResultError>([&] { f.get(); });
        EXPECT_NE(what.find(expected_fragment), std::string::npos) << function << ": " << what;
        EXPECT_NE(what.find("pyscheduler_test_funcs." + function), std::string::npos) << what;
    }
}

TEST(QueueInvokeErrors, TooFewResults) { expect_result_error("one_too_few", "returned 3 results for a batch of 4"); }
TEST(QueueInvokeErrors, TooManyResults) { expect_result_error("one_too_many", "returned 5 results for a batch of 4"); }
TEST(QueueInvokeErrors, NoneIsNotASequence) { expect_result_error("return_none", "returned NoneType"); }
TEST(QueueInvokeErrors, DictIsNotASequence) { expect_result_error("return_dict", "returned dict"); }
TEST(QueueInvokeErrors, GeneratorIsNotASequence) { expect_result_error("return_generator", "returned generator"); }
TEST(QueueInvokeErrors, StringIsNotAResultList) { expect_result_error("return_string", "returned str"); }

TEST(QueueInvokeErrors, SystemExitAndKeyboardInterruptBecomePythonErrors) {
    for (const char* fn : {"raise_system_exit", "raise_keyboard_interrupt"}) {
        auto h = load(fn);
        auto f = h.queue_invoke(commit_value(1), cast_to<int>());
        try {
            f.get();
            FAIL() << fn << " did not throw";
        } catch (const PythonError& e) {
            EXPECT_TRUE(e.type_name() == "SystemExit" || e.type_name() == "KeyboardInterrupt") << e.type_name();
        }
    }
    // ...and the process (and the interpreter) carry on.
    EXPECT_EQ(load("add").invoke<int>(1, 2), 3);
}

}  // namespace
}  // namespace pyscheduler::test
