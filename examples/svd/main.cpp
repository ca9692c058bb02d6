// svd: the batching pipeline. 1000 random 100x100 matrices are generated in C++ on
// the commit thread without the GIL, handed to numpy without a copy, batched 32 at a
// time and decomposed by numpy in one call per batch; the largest singular value of
// each comes back to C++ through its future.
#include <pybind11/numpy.h>
#include <pyscheduler/pyscheduler.hpp>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <random>
#include <vector>

namespace py = pybind11;
using Clock = std::chrono::steady_clock;

constexpr int kMatrices = 1000;
constexpr py::ssize_t kSize = 100;

/// What the commit function produces: plain C++, no Python object, so the commit
/// runs without the GIL.
struct Matrix {
    std::vector<double> data;
    py::ssize_t rows = 0;
    py::ssize_t cols = 0;
};

/// How the executor turns a Matrix into Python (inside its GIL hold): a numpy array
/// that takes over the vector's buffer, no copy.
namespace pybind11::detail {
template <>
struct type_caster<Matrix> {
    PYBIND11_TYPE_CASTER(Matrix, const_name("numpy.ndarray"));
    bool load(handle, bool) { return false; }  // Python -> C++ is not needed here
    static handle cast(Matrix&& m, return_value_policy, handle) {
        auto* owner = new std::vector<double>(std::move(m.data));
        py::capsule free_with_array(owner, [](void* p) { delete static_cast<std::vector<double>*>(p); });
        return py::array_t<double>({m.rows, m.cols}, owner->data(), free_with_array).release();
    }
};
}  // namespace pybind11::detail

int main() {
    // Compare like with like: a single-threaded Python loop against the pipeline,
    // whose extra core is the commit thread staging matrices while numpy computes.
    // (With BLAS threads on every core, both sides would fight over the same cores.)
    for (const char* var : {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}) setenv(var, "1", 0);
    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);
    auto svd = python.loadPythonModule("svd_module", "largest_singular_values", /*batch_size=*/32,
                                       /*prefetch_depth=*/3);

    const auto t0 = Clock::now();
    std::vector<std::future<double>> results;
    results.reserve(kMatrices);
    for (int i = 0; i < kMatrices; ++i) {
        results.push_back(svd.queue_invoke(
            // commit: on the commit thread, ahead of execution, without the GIL.
            [seed = i] {
                std::mt19937_64 rng(seed);
                std::uniform_real_distribution<double> uniform(-1.0, 1.0);
                Matrix m{std::vector<double>(kSize * kSize), kSize, kSize};
                for (double& x : m.data) x = uniform(rng);
                return m;
            },
            // callback: on the executor, with the GIL; its value completes the future.
            [](py::object sigma) { return sigma.cast<double>(); }));
    }
    double largest = 0;
    for (auto& r : results) largest = std::max(largest, r.get());
    const double pipeline_s = std::chrono::duration<double>(Clock::now() - t0).count();

    auto loop = python.loadPythonModule("svd_module", "plain_loop");
    const auto t1 = Clock::now();
    loop.invoke<void>(kMatrices, kSize, 0);
    const double loop_s = std::chrono::duration<double>(Clock::now() - t1).count();

    const auto stats = svd.get_queue_stats();
    std::cout << kMatrices << " SVDs of " << kSize << "x" << kSize << " matrices, batch 32, prefetch 3\n"
              << "  pipeline:          " << kMatrices / pipeline_s << " matrices/s (" << pipeline_s << " s)\n"
              << "  plain Python loop: " << kMatrices / loop_s << " matrices/s (" << loop_s << " s)\n"
              << "  mean batch size " << stats.execute_batch_size_ema << "; completed " << stats.completed
              << ", failed " << stats.failed << "; largest singular value " << largest << "\n";
    return stats.completed == kMatrices ? 0 : 1;
}
