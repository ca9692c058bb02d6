// A task graph over three handlers, written the way smqsched's users write it:
//
//   A[i] = make(i)              (i < n)       on handler `make`
//   B[i] = inv(A[i])                          on handler `inv`
//   C[i*n + k] = trace(B[i] @ B[k])           on handler `products` (Lifo order)
//
// Every item is submitted at once: an item whose inputs are futures waits for them
// without a thread, and the thread that completes its last input queues it. Matrices
// travel between handlers as shared immutable C++ buffers, handed to numpy as
// read-only views (no copies). Then a graph with one failing input shows the failure
// reaching its dependents as DependencyFailed, without running them.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <pyscheduler/pyscheduler.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <utility>
#include <vector>

namespace py = pybind11;
using Matrix = std::shared_ptr<const std::vector<double>>;

constexpr int kN = 40;  // matrices; kN * kN products
constexpr py::ssize_t kSize = 100;

/// A read-only numpy view of a matrix; the array keeps the buffer alive.
py::array view(const Matrix& m) {
    auto* keep = new Matrix(m);
    py::capsule owner(keep, [](void* p) { delete static_cast<Matrix*>(p); });
    py::array_t<double> a({kSize, kSize}, {kSize * py::ssize_t(sizeof(double)), py::ssize_t(sizeof(double))},
                          const_cast<double*>(m->data()), owner);
    py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
    return a;
}

/// Callback: the Python result (a numpy array) copied into a C++ Matrix.
Matrix to_matrix(py::object o) {
    auto a = o.cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
    return std::make_shared<const std::vector<double>>(a.data(), a.data() + a.size());
}

int main() {
    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);
    pyscheduler::HandlerOptions o;
    o.workers = 2;  // Main workers: they overlap while numpy's BLAS releases the GIL
    auto make = python.loadPythonModule("graph_module", "make", o);
    auto inv = python.loadPythonModule("graph_module", "inv", o);
    o.batch_size = 8;
    o.order = pyscheduler::Order::Lifo;  // newest ready product first
    auto products = python.loadPythonModule("graph_module", "products", o);

    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    std::vector<pyscheduler::SharedFuture<Matrix>> b;
    for (int i = 0; i < kN; ++i) {
        // make -> inv: the Future of A[i] is moved into B[i]'s item; B[i] is shared
        // by the 2 * kN products that read it.
        pyscheduler::Future<Matrix> a = make.submit([i] { return std::pair<int, long>(i, kSize); }, to_matrix);
        b.push_back(inv.submit([](const Matrix& m) { return view(m); }, to_matrix, std::move(a)).share());
    }
    std::vector<pyscheduler::Future<double>> c;
    for (int i = 0; i < kN; ++i) {
        for (int k = 0; k < kN; ++k) {
            c.push_back(products.submit([](const Matrix& x, const Matrix& y) { return py::make_tuple(view(x), view(y)); },
                                        [](py::object r) { return r.cast<double>(); }, b[i], b[k]));
        }
    }
    std::printf("submitted %d items at once; %zu wait for their inputs\n", kN * 2 + kN * kN,
                products.get_queue_stats().waiting + inv.get_queue_stats().waiting);
    double checksum = 0;
    for (auto& f : c) checksum += f.get();
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const double expected = python.loadPythonModule("graph_module", "loop_checksum").invoke<double>(kN, kSize);
    std::printf("%d products in %.3f s; checksum %.6g, the plain loop's %.6g\n", kN * kN, seconds, checksum, expected);
    if (std::abs(checksum - expected) > 1e-9 * std::abs(expected)) return 1;

    // One failing input: its dependents fail with DependencyFailed, without running.
    auto bad = make.submit([] { return std::pair<int, long>(-1, kSize); }, to_matrix);
    auto bad_inv = inv.submit([](const Matrix& m) { return view(m); }, to_matrix, std::move(bad)).share();
    auto product = products.submit([](const Matrix& x, const Matrix& y) { return py::make_tuple(view(x), view(y)); },
                                   [](py::object r) { return r.cast<double>(); }, bad_inv, b[0]);
    try {
        product.get();
        return 1;
    } catch (const pyscheduler::DependencyFailed& e) {
        std::printf("a failed input reached its dependent:\n  %.200s...\n", e.what());
    }
    std::printf("graph done\n");
}
