// A host program for tests/test_process.cpp: two process workers, each busy with a
// call that sleeps ten minutes, when the host dies in the way the argument names. It
// prints the workers' pids ("worker <pid>"); the test checks they die with it.
#include <pyscheduler/pyscheduler.hpp>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace py = pybind11;

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_TEST_PYTHON_DIR);
    pyscheduler::HandlerOptions options;
    options.interpreter = pyscheduler::InterpreterKind::Process;
    options.workers = 2;
    auto* h = new pyscheduler::InvokeHandler(python.loadPythonModule("pyscheduler_test_process", "run", options));
    static std::vector<std::future<int>> pending;  // reachable: never completed
    for (int i = 0; i < 2; ++i) {
        const std::string path = "/tmp/pyscheduler-process-child-" + std::to_string(getpid()) + "-" + std::to_string(i);
        pending.push_back(h->queue_invoke([path] { return std::make_tuple(std::string("hang"), path); },
                                          [](py::object) { return 0; }));
        long pid = -1;  // the call writes its pid once it runs
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (!(std::ifstream(path) >> pid) && std::chrono::steady_clock::now() < until) {
            std::this_thread::yield();
        }
        std::remove(path.c_str());
        std::cout << "worker " << pid << std::endl;
    }
    std::cout << "both workers busy" << std::endl;
    if (mode == "sigkill") raise(SIGKILL);
    if (mode == "exit") std::exit(0);  // the handler is left running (it has a busy worker)
    if (mode == "return_with_leaked_handler") return 0;
    std::cerr << "unknown mode\n";
    return 2;
}
