// Process workers: a numpy function in two child processes, where a crash costs one
// batch and not the program.
//
//   ./configure.sh --run isolated
//
// 1. 200 vectors go to two worker processes (numpy arrays pass through shared memory);
//    both processes take part.
// 2. One input segfaults its worker: that item fails with pyscheduler::WorkerLost naming
//    the signal, every other item completes, and the worker is restarted.
#include <pybind11/stl.h>
#include <pyscheduler/pyscheduler.hpp>

#include <cstdio>
#include <map>
#include <utility>
#include <vector>

namespace py = pybind11;

int main() {
    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);
    pyscheduler::HandlerOptions options;
    options.interpreter = pyscheduler::InterpreterKind::Process;
    options.workers = 2;
    options.batch_size = 8;
    auto model = python.loadPythonModule("isolated_model", "predict", options);

    // A vector of 1024 values v (the commit function makes the numpy array, under the GIL).
    auto vector_of = [](double v) {
        return [v] { return py::module_::import("numpy").attr("full")(1024, v); };
    };
    auto norm_and_pid = [](py::object r) { return r.cast<std::pair<long, double>>(); };

    std::vector<pyscheduler::InvokeHandler::future<std::pair<long, double>>> futures;
    for (int i = 0; i < 200; ++i) futures.push_back(model.queue_invoke(vector_of(i % 7), norm_and_pid));
    std::map<long, int> items_per_process;
    for (auto& f : futures) ++items_per_process[f.get().first];
    for (const auto& [pid, n] : items_per_process) std::printf("worker process %ld ran %d items\n", pid, n);

    futures.clear();
    for (int i = 0; i < 40; ++i) futures.push_back(model.queue_invoke(vector_of(i == 20 ? -1 : 2), norm_and_pid));
    int completed = 0;
    int lost = 0;
    for (auto& f : futures) {
        try {
            f.get();
            ++completed;
        } catch (const pyscheduler::WorkerLost& e) {
            if (lost++ == 0) std::printf("lost: %s\n", e.what());
        }
    }
    std::printf("after a worker crashed: %d items completed, %d failed with WorkerLost (its batch)\n", completed,
                lost);
    const bool ok = items_per_process.size() == 2 && lost >= 1 && lost <= 8 && completed + lost == 40;
    std::printf("crash contained: %s\n", ok ? "yes" : "no");
    return ok ? 0 : 1;
}
