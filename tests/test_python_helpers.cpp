// The per-item error protocol: an exception instance in place of a result fails that
// item alone. @pyscheduler.batched (python/pyscheduler) produces it.
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

InvokeHandler load_batched(const std::string& function) {
    python().add_path(PYSCHEDULER_PYTHON_PACKAGE_DIR);  // the package's source: import pyscheduler
    HandlerOptions o;
    o.batch_size = 8;
    o.max_batch_delay = std::chrono::seconds(5);  // one batch of 8
    return python().loadPythonModule("pyscheduler_test_batched", function, o);
}

TEST(PythonHelpers, BatchedFailsOnlyTheItemThatRaised) {
    auto h = load_batched("inverse");
    std::vector<std::future<double>> futures;
    for (int i = -4; i < 4; ++i) futures.push_back(h.queue_invoke([i] { return i; }, cast_to<double>()));
    for (int i = -4; i < 4; ++i) {
        auto& f = futures[i + 4];
        if (i == 0) {
            try {
                f.get();
                FAIL() << "did not throw";
            } catch (const PythonError& e) {
                EXPECT_EQ(e.type_name(), "ZeroDivisionError");
                EXPECT_EQ(e.message(), "item 0 has no inverse");
                EXPECT_NE(e.traceback().find("inverse"), std::string::npos) << e.traceback();
            }
        } else {
            EXPECT_DOUBLE_EQ(f.get(), 1.0 / i);
        }
    }
    EXPECT_EQ(h.get_queue_stats().failed, 1u);
}

TEST(PythonHelpers, ExceptionInstancesAsResultsFailTheirItems) {
    auto h = load_batched("exception_as_result");
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 8; ++i) futures.push_back(h.queue_invoke([i] { return i; }, cast_to<int>()));
    for (int i = 0; i < 8; ++i) {
        if (i % 2) {
            try {
                futures[i].get();
                FAIL() << "did not throw";
            } catch (const PythonError& e) {
                EXPECT_EQ(e.type_name(), "KeyError");
                EXPECT_NE(e.message().find("missing " + std::to_string(i)), std::string::npos) << e.message();
            }
        } else {
            EXPECT_EQ(futures[i].get(), i);
        }
    }
}

TEST(PythonHelpers, StackedRunsOnceOnTheStackedBatchAndIsolatesFailures) {
    auto h = load_batched("row_norms");
    std::vector<std::future<double>> futures;
    for (int i = 0; i < 8; ++i) {
        futures.push_back(h.queue_invoke(
            [i] {  // a pybind11 object: the commit runs with the GIL
                py::list row;
                for (double x : {3.0 * i, 4.0 * i, i == 5 ? -1.0 : 0.0}) row.append(x);
                return py::module_::import("numpy").attr("array")(row);
            },
            cast_to<double>()));
    }
    for (int i = 0; i < 8; ++i) {
        if (i == 5) {
            EXPECT_THROW(futures[i].get(), PythonError);
        } else {
            EXPECT_DOUBLE_EQ(futures[i].get(), 5.0 * i);
        }
    }
}

}  // namespace
}  // namespace pyscheduler::test
