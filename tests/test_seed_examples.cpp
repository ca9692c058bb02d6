// The seed README's examples, unchanged in spirit: synchronous add and to_string,
// and the 1000-matrix SVD pipeline with numpy, handing numpy arrays from one handler
// to the next through release().ptr() / reinterpret_steal.
#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

TEST(SeedExamples, SynchronousAdd) {
    auto add = python().loadPythonModule("pyscheduler_test_funcs", "add");
    EXPECT_EQ(add.invoke<int64_t>(3000, -1234), 1766);
}

TEST(SeedExamples, SynchronousToStringWithCallback) {
    auto concat = python().loadPythonModule("pyscheduler_test_funcs", "concat");
    std::string s = concat.invoke([](py::object o) { return py::str(o).cast<std::string>(); }, "hello", " world");
    EXPECT_EQ(s, "hello world");
}

TEST(SeedExamples, QueueStatsUnderTheSeedsName) {
    auto h = python().loadPythonModule("pyscheduler_test_funcs", "double", 4, 2);
    EXPECT_EQ(h.queue_invoke([] { return 21; }, cast_to<int>()).get(), 42);
    PyManager::InvokeHandler::QueueStats stats = h.get_queue_stats();  // the seed's spelling
    static_assert(std::is_same_v<PyManager::InvokeHandler::QueueStats, QueueStats>);
    const int64_t enqueued = static_cast<int64_t>(stats.total_enqueued);  // the seed's field was int64_t
    EXPECT_EQ(enqueued, 1);
}

TEST(SeedExamples, SvdPipelineWithNumpy) {
    constexpr int kMatrices = 1000;
    auto& m = python();
    auto make = m.loadPythonModule("pyscheduler_test_svd", "make_matrices", 32, 3);
    auto svd = m.loadPythonModule("pyscheduler_test_svd", "singular_values", 32, 3);
    auto frob = m.loadPythonModule("pyscheduler_test_svd", "frobenius_squared", 32, 3);

    // Stage 1: numpy makes the matrices; the callback hands each one out as an owned
    // PyObject* (release() keeps the reference, so it survives the GIL hand-off).
    std::vector<std::future<PyObject*>> matrices;
    for (int i = 0; i < kMatrices; ++i) {
        matrices.push_back(make.queue_invoke([i] { return i; }, [](py::object o) { return o.release().ptr(); }));
    }

    // Stage 2: each matrix goes to the SVD handler and to a reference computation.
    // The commit returns a pybind11 object, so it runs with the GIL and steals the
    // reference back.
    std::vector<std::future<std::vector<double>>> singular;
    std::vector<std::future<double>> norms;
    for (auto& f : matrices) {
        PyObject* matrix = f.get();
        {
            detail::GilHold gil;
            Py_INCREF(matrix);  // one reference for each consumer
        }
        singular.push_back(svd.queue_invoke([matrix] { return py::reinterpret_steal<py::object>(matrix); },
                                            cast_to<std::vector<double>>()));
        norms.push_back(frob.queue_invoke([matrix] { return py::reinterpret_steal<py::object>(matrix); },
                                          cast_to<double>()));
    }

    // Sum of squared singular values == squared Frobenius norm.
    int checked = 0;
    for (int i = 0; i < kMatrices; ++i) {
        auto s = singular[i].get();
        ASSERT_EQ(s.size(), 100u);
        double sum_sq = std::inner_product(s.begin(), s.end(), s.begin(), 0.0);
        double expected = norms[i].get();
        EXPECT_NEAR(sum_sq, expected, 1e-9 * expected);
        EXPECT_TRUE(std::is_sorted(s.rbegin(), s.rend()));
        ++checked;
    }
    EXPECT_EQ(checked, kMatrices);
}

}  // namespace
}  // namespace pyscheduler::test
