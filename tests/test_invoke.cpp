// Synchronous calls, PyManager, add_path and loadPythonModule errors.
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

TEST(Invoke, ReturnsCastResult) {
    auto add = load("add");
    EXPECT_EQ(add.invoke<int64_t>(3000, -1234), 1766);
    EXPECT_DOUBLE_EQ(add.invoke<double>(0.5, 0.25), 0.75);
}

TEST(Invoke, CallbackGetsThePythonObjectWithTheGil) {
    auto concat = load("concat");
    auto s = concat.invoke(
        [](py::object o) {
            EXPECT_TRUE(PyGILState_Check());
            return o.cast<std::string>();
        },
        "hello", " world");
    EXPECT_EQ(s, "hello world");
}

TEST(Invoke, VoidDiscardsTheResult) {
    auto add = load("add");
    add.invoke<void>(1, 2);
    SUCCEED();
}

TEST(Invoke, PythonExceptionBecomesPythonError) {
    auto f = load("raise_value_error_sync");
    try {
        f.invoke<void>("bad input 42");
        FAIL() << "did not throw";
    } catch (const PythonError& e) {
        EXPECT_EQ(e.type_name(), "ValueError");
        EXPECT_EQ(e.message(), "bad input 42");
        EXPECT_NE(e.traceback().find("raise_value_error_sync"), std::string::npos) << e.traceback();
        const std::string what = e.what();
        EXPECT_NE(what.find("pyscheduler_test_funcs.raise_value_error_sync raised ValueError: bad input 42"),
                  std::string::npos)
            << what;
    }
}

TEST(Invoke, PythonErrorIsCopyableWithoutTheGil) {
    auto f = load("raise_value_error_sync");
    std::exception_ptr error;
    try {
        f.invoke<void>("copied");
    } catch (...) {
        error = std::current_exception();
    }
    ASSERT_TRUE(error);
    std::thread([&] {  // a thread that never touched Python
        try {
            std::rethrow_exception(error);
        } catch (const PythonError& e) {
            PythonError copy = e;
            EXPECT_EQ(copy.message(), "copied");
        }
    }).join();
}

TEST(Invoke, ResultOfTheWrongTypeIsACastError) {
    auto concat = load("concat");
    EXPECT_THROW(concat.invoke<int>("a", "b"), py::cast_error);
}

TEST(Invoke, KeepsOneThreadStatePerThread) {
    auto add = load("add");
    std::vector<PyThreadState*> seen;
    std::thread([&] {
        for (int i = 0; i < 100; ++i) {
            add.invoke([&](py::object) { seen.push_back(PyThreadState_Get()); }, i, i);
        }
    }).join();
    ASSERT_EQ(seen.size(), 100u);
    for (auto* ts : seen) EXPECT_EQ(ts, seen.front());
}

TEST(Invoke, CoexistsWithPybind11GilGuards) {
    auto add = load("add");
    std::thread([&] {
        {
            py::gil_scoped_acquire gil;  // pybind11 adopts (or creates) this thread's state
            EXPECT_EQ(add.invoke<int>(1, 2), 3);  // re-entrant: the GIL is held already
            {
                py::gil_scoped_release nogil;
                EXPECT_EQ(add.invoke<int>(2, 2), 4);
            }
        }
        EXPECT_EQ(add.invoke<int>(3, 2), 5);  // our thread state survived pybind11's scopes
    }).join();
}

TEST(Invoke, ManyThreadsAtOnce) {
    auto add = load("add");
    std::vector<std::thread> threads;
    std::atomic<int> wrong{0};
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 2000; ++i) {
                if (add.invoke<int>(t, i) != t + i) ++wrong;
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(wrong.load(), 0);
}

TEST(PyManager, ConstructionFromManyThreadsAtOnce) {
    // Runs in its own process under ctest, so the interpreter starts here.
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&] {
            PyManager m;
            m.add_path(PYSCHEDULER_TEST_PYTHON_DIR);
            auto add = m.loadPythonModule("pyscheduler_test_funcs", "add");
            if (add.invoke<int>(20, 22) == 42) ++ok;
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(ok.load(), 8);
    EXPECT_TRUE(Py_IsInitialized());
}

TEST(PyManager, AddPathIsIdempotent) {
    auto& m = python();
    m.add_path("/nonexistent/pyscheduler-test-dir");
    m.add_path("/nonexistent/pyscheduler-test-dir");
    detail::GilHold gil;
    py::list path = py::module_::import("sys").attr("path");
    int count = 0;
    for (py::handle p : path) count += p.cast<std::string>() == "/nonexistent/pyscheduler-test-dir" ? 1 : 0;
    EXPECT_EQ(count, 1);
}

TEST(PyManager, AddPathRejectsTheEmptyString) {
    EXPECT_THROW(python().add_path(""), std::invalid_argument);
}

TEST(PyManager, MissingModuleIsNamed) {
    auto what = what_of<std::invalid_argument>([] { python().loadPythonModule("no_such_module_xyz", "f"); });
    EXPECT_NE(what.find("no_such_module_xyz.f"), std::string::npos) << what;
    EXPECT_NE(what.find("ModuleNotFoundError"), std::string::npos) << what;
}

TEST(PyManager, MissingFunctionIsNamed) {
    auto what = what_of<std::invalid_argument>([] { load("no_such_function"); });
    EXPECT_NE(what.find("pyscheduler_test_funcs.no_such_function"), std::string::npos) << what;
    EXPECT_NE(what.find("AttributeError"), std::string::npos) << what;
}

TEST(PyManager, NonCallableIsRejected) {
    auto what = what_of<std::invalid_argument>([] { load("not_callable"); });
    EXPECT_NE(what.find("pyscheduler_test_funcs.not_callable"), std::string::npos) << what;
    EXPECT_NE(what.find("not callable"), std::string::npos) << what;
    EXPECT_NE(what.find("int"), std::string::npos) << what;
}

TEST(PyManager, ModuleThatFailsToImportReportsThePythonError) {
    auto what = what_of<std::invalid_argument>([] { python().loadPythonModule("pyscheduler_test_broken", "f"); });
    EXPECT_NE(what.find("pyscheduler_test_broken.f"), std::string::npos) << what;
    EXPECT_NE(what.find("RuntimeError"), std::string::npos) << what;
    EXPECT_NE(what.find("refuses to be imported"), std::string::npos) << what;
}

TEST(PyManager, InvalidOptionsAreRejected) {
    EXPECT_THROW(load("identity", 0, 1), std::invalid_argument);
    EXPECT_THROW(load("identity", 1, 0), std::invalid_argument);
    HandlerOptions o;
    o.max_batch_delay = std::chrono::microseconds(-1);
    EXPECT_THROW(load("identity", o), std::invalid_argument);
    o = HandlerOptions{};
    o.batch_size = std::size_t{1} << 20;
    o.prefetch_depth = std::size_t{1} << 20;
    EXPECT_THROW(load("identity", o), std::invalid_argument);
}

TEST(InvokeHandler, MovedFromHandlerThrowsLogicError) {
    auto a = load("add");
    auto b = std::move(a);
    EXPECT_EQ(b.invoke<int>(1, 1), 2);
    EXPECT_THROW(a.invoke<int>(1, 1), std::logic_error);  // NOLINT(bugprone-use-after-move)
    EXPECT_EQ(b.name(), "pyscheduler_test_funcs.add");
}

}  // namespace
}  // namespace pyscheduler::test
