// InterpreterKind::OwnGil: handlers in sub-interpreters with their own GIL (CPython
// >= 3.12). Every API on such a handler, module state isolation, the numpy refusal,
// errors and drains, and many handlers created and destroyed. On 3.11 only the
// refusal runs (the others skip).
#include <atomic>
#include <latch>
#include <optional>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

HandlerOptions own_gil(std::size_t batch_size = 1) {
    HandlerOptions o;
    o.batch_size = batch_size;
    o.prefetch_depth = 2;
    o.interpreter = InterpreterKind::OwnGil;
    return o;
}

InvokeHandler load_own(const std::string& function, std::size_t batch_size = 1) {
    return python().loadPythonModule("pyscheduler_test_own_gil", function, own_gil(batch_size));
}

TEST(OwnGil, RefusedBeforeCPython312) {
#if PY_VERSION_HEX >= 0x030C0000
    GTEST_SKIP() << "this build embeds CPython 3.12+";
#else
    EXPECT_NE(what_of<std::invalid_argument>([] { load_own("square"); }).find("needs CPython 3.12 or newer"),
              std::string::npos);
#endif
}

TEST(OwnGil, RunsInAnInterpreterOfItsOwn) {
    PYSCHEDULER_REQUIRE_OWN_GIL(InterpreterKind::OwnGil);
    auto main = python().loadPythonModule("pyscheduler_test_own_gil", "interpreter_id");
    auto a = load_own("interpreter_id");
    auto b = load_own("interpreter_id");
    const long main_id = main.invoke<long>();
    EXPECT_EQ(main_id, 0);
    EXPECT_NE(a.invoke<long>(), main_id);
    EXPECT_NE(b.invoke<long>(), main_id);
    EXPECT_NE(a.invoke<long>(), b.invoke<long>());
    EXPECT_EQ(a.queue_invoke([] { return 0; }, cast_to<long>()).get(), a.invoke<long>())
        << "the pipeline's threads run in the handler's interpreter too";
}

TEST(OwnGil, EveryApiWorks) {
    PYSCHEDULER_REQUIRE_OWN_GIL(InterpreterKind::OwnGil);
    auto square = load_own("square");
    EXPECT_EQ(square.invoke<int>(7), 49);
    EXPECT_EQ(square.invoke([](py::object o) { return o.cast<int>() + 1; }, 6), 37);

    auto squares = load_own("squares", 8);
    std::vector<std::future<long>> futures;
    for (int i = 0; i < 100; ++i) futures.push_back(squares.queue_invoke([i] { return i; }, cast_to<long>()));
    for (int i = 0; i < 100; ++i) {  // commits returning Python objects run in the sub-interpreter
        futures.push_back(squares.queue_invoke([i] { return py::int_(i); }, cast_to<long>()));
    }
    auto tried = squares.try_queue_invoke([] { return 12; }, cast_to<long>());
    ASSERT_TRUE(tried.has_value());
    for (int i = 0; i < 200; ++i) EXPECT_EQ(futures[i].get(), static_cast<long>(i % 100) * (i % 100));
    EXPECT_EQ(tried->get(), 144);
    EXPECT_EQ(squares.get_queue_stats().completed, 201u);
    squares.shutdown(ShutdownMode::Drain);
    EXPECT_TRUE(squares.is_shut_down());
    EXPECT_EQ(square.invoke<int>(3), 9) << "synchronous invoke keeps working";
}

TEST(OwnGil, SynchronousInvokeFromManyThreads) {
    PYSCHEDULER_REQUIRE_OWN_GIL(InterpreterKind::OwnGil);
    auto square = load_own("square");
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 200; ++i) {
                const int x = t * 1000 + i;
                if (square.invoke<long>(x) != static_cast<long>(x) * x) ++wrong;
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(wrong.load(), 0);
}

// CPython <= 3.13.0 aborted ("init_threadstate: thread state already initialized")
// when an interpreter's list of thread states went empty while one thread deleted a
// state and another made one (gh-126914); SubInterpreter's anchor state prevents it.
// The window is widest while a handler starts, before its threads hold their states:
// every round here invokes from four threads the moment the handler exists.
TEST(OwnGilStress, InvokesFromManyThreadsAsTheHandlerStarts) {
    PYSCHEDULER_REQUIRE_OWN_GIL(InterpreterKind::OwnGil);
    constexpr int kRounds = 60;
    constexpr int kThreads = 4;
    std::atomic<int> wrong{0};
    for (int round = 0; round < kRounds; ++round) {
        std::optional<InvokeHandler> square;
        std::latch created(1);
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; ++t) {
            threads.emplace_back([&, t] {
                created.wait();
                for (long x = t; x < 40; x += kThreads) {
                    if (square->invoke<long>(x) != x * x) ++wrong;
                }
            });
        }
        square.emplace(load_own("square"));
        created.count_down();
        for (auto& th : threads) th.join();
    }
    EXPECT_EQ(wrong.load(), 0);
}

TEST(OwnGil, ModuleStateIsPerHandler) {
    PYSCHEDULER_REQUIRE_OWN_GIL(InterpreterKind::OwnGil);
    auto a = load_own("bump", 4);
    auto b = load_own("bump", 4);
    auto main = python().loadPythonModule("pyscheduler_test_own_gil", "bump");
    std::vector<std::future<long>> fa, fb, fm;
    for (int i = 0; i < 10; ++i) {
        fa.push_back(a.queue_invoke([] { return 0; }, cast_to<long>()));
        fb.push_back(b.queue_invoke([] { return 0; }, cast_to<long>()));
        fm.push_back(main.queue_invoke([] { return 0; }, cast_to<long>()));
    }
    for (int i = 0; i < 10; ++i) {
        EXPECT_EQ(fa[i].get(), i + 1);
        EXPECT_EQ(fb[i].get(), i + 1);
        EXPECT_EQ(fm[i].get(), i + 1);
    }
}

TEST(OwnGil, NumpyIsRefusedWithPythonsReason) {
    PYSCHEDULER_REQUIRE_OWN_GIL(InterpreterKind::OwnGil);
    const std::string msg = what_of<std::invalid_argument>(
        [] { python().loadPythonModule("pyscheduler_test_numpy_user", "total", own_gil()); });
    EXPECT_NE(msg.find("ImportError"), std::string::npos) << msg;
    EXPECT_NE(msg.find("subinterpreters"), std::string::npos) << msg;
    EXPECT_NE(msg.find("InterpreterKind::OwnGil"), std::string::npos) << msg;
    auto main = python().loadPythonModule("pyscheduler_test_numpy_user", "total");
    EXPECT_EQ(main.queue_invoke([] { return std::vector<double>{1.5, 2.5}; }, cast_to<double>()).get(), 4.0)
        << "the main interpreter is unaffected";
}

TEST(OwnGil, ErrorsFailTheirItemsAndDestructionDrains) {
    PYSCHEDULER_REQUIRE_OWN_GIL(InterpreterKind::OwnGil);
    {
        auto fail = load_own("fail", 4);
        auto f = fail.queue_invoke([] { return 1; }, cast_to<int>());
        try {
            f.get();
            FAIL() << "did not throw";
        } catch (const PythonError& e) {
            EXPECT_EQ(e.type_name(), "ValueError");
            EXPECT_NE(e.message().find("refusing a batch"), std::string::npos);
        }
        EXPECT_THROW(fail.invoke<int>(std::vector<int>{1, 2}), PythonError);
    }
    std::vector<std::future<long>> futures;
    {
        auto squares = load_own("squares", 16);
        for (int i = 0; i < 500; ++i) futures.push_back(squares.queue_invoke([i] { return i; }, cast_to<long>()));
    }  // destroyed with work queued: drains, then ends its interpreter
    for (int i = 0; i < 500; ++i) {
        ASSERT_TRUE(completes(futures[i]));
        EXPECT_EQ(futures[i].get(), static_cast<long>(i) * i);
    }
}

TEST(OwnGil, ManyHandlersCreatedAndDestroyed) {
    PYSCHEDULER_REQUIRE_OWN_GIL(InterpreterKind::OwnGil);
    for (int round = 0; round < 20; ++round) {
        auto h = load_own("squares", 4);
        std::vector<std::future<long>> f;
        for (int i = 0; i < 10; ++i) f.push_back(h.queue_invoke([i] { return i; }, cast_to<long>()));
        for (int i = 0; i < 10; ++i) ASSERT_EQ(f[i].get(), static_cast<long>(i) * i);
    }
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            for (int round = 0; round < 5; ++round) {
                auto h = load_own("squares", 2);
                if (h.queue_invoke([] { return 9; }, cast_to<long>()).get() != 81) ++wrong;
                if (h.invoke([](py::object o) { return o.cast<std::vector<long>>(); }, std::vector<int>{3}) !=
                    std::vector<long>{9}) {
                    ++wrong;
                }
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(wrong.load(), 0);
}

}  // namespace
}  // namespace pyscheduler::test
