// A child process for tests/test_exit.cpp: leaves the process in one state or
// another at exit, with numpy imported and handlers alive. The parent checks the exit
// code and that what Python printed was not lost.
#include <pyscheduler/pyscheduler.hpp>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

namespace py = pybind11;
using pyscheduler::InvokeHandler;
using pyscheduler::PyManager;

static InvokeHandler load(const char* function = "announce") {
    PyManager m;
    m.add_path(PYSCHEDULER_TEST_PYTHON_DIR);
    return m.loadPythonModule("pyscheduler_test_exit", function, 4, 2);
}

/// Queues one item on `h` (whose function is slow or never returns) and returns
/// once that function has started; the item's future is left pending.
static void start_call(InvokeHandler& h) {
    static std::vector<std::future<int>> pending;  // reachable: not a leak
    pending.push_back(h.queue_invoke([] { return 1; }, [](py::object o) { return o.cast<int>(); }));
    load("wait_until_entered").invoke<void>();
}

static void queue_some(InvokeHandler& h, int n, bool wait) {
    std::vector<std::future<int>> futures;
    for (int i = 0; i < n; ++i) futures.push_back(h.queue_invoke([i] { return i; }, [](py::object o) { return o.cast<int>(); }));
    if (wait) {
        for (auto& f : futures) f.get();
    }
}

/// Made after Python started, as the static objects of the extension modules Python
/// loads are: its destructor says whether Python was finalized before it ran (it must
/// have been, when Python is finalized at all: such statics may own Python objects).
struct StaticProbe {
    ~StaticProbe() { std::printf("static destructor: python %s\n", Py_IsInitialized() ? "running" : "finalized"); }
};

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    std::cout << "child: " << mode << std::endl;
    PyManager python;
    static StaticProbe probe;
    // A static Python object outliving the interpreter: its destructor must not touch it.
    static pyscheduler::GilSafe<py::object> kept = [] {
        pyscheduler::detail::GilHold gil;
        return pyscheduler::GilSafe<py::object>(py::list(py::make_tuple(1, 2, 3)));
    }();
    if (mode == "static_idle") {  // a static handler: destroyed (drained) among the static destructors
        static InvokeHandler h = load();
        queue_some(h, 8, true);
        return 0;
    }
    if (mode == "static_with_queued_work") {
        static InvokeHandler h = load();
        queue_some(h, 1000, false);
        return 0;
    }
    if (mode == "leaked_idle") {  // never destroyed: Python is left running, stdout flushed
        static InvokeHandler* never_destroyed = nullptr;  // reachable, so LSan does not count it
        never_destroyed = new InvokeHandler(load());
        queue_some(*never_destroyed, 8, true);
        return 0;
    }
    if (mode == "exit_with_local_handler") {  // std::exit skips local destructors
        InvokeHandler h = load();
        queue_some(h, 8, true);
        std::exit(0);
    }
    if (mode == "local_handler") {  // the ordinary case: everything destroyed in order
        InvokeHandler h = load();
        queue_some(h, 8, true);
        return 0;
    }
    if (mode == "static_shut_down") {  // shut down, not destroyed: it still holds Python objects
        static InvokeHandler h = load();
        queue_some(h, 8, true);
        h.shutdown(pyscheduler::ShutdownMode::Drain);
        return 0;
    }
    // A handler whose Python function is still running at exit.
    if (mode == "static_while_python_runs") {  // the destructor drains: exit waits for the call
        static InvokeHandler h = load();
        queue_some(h, 8, true);
        static InvokeHandler slow = load("slow");
        start_call(slow);
        return 0;
    }
    if (mode == "leaked_while_python_never_returns") {  // not destroyed: exit does not wait
        static InvokeHandler* never_destroyed = nullptr;
        never_destroyed = new InvokeHandler(load());
        queue_some(*never_destroyed, 8, true);
        static InvokeHandler* stuck = nullptr;
        stuck = new InvokeHandler(load("forever"));
        start_call(*stuck);
        return 0;
    }
    if (mode == "exit_while_python_never_returns") {
        InvokeHandler h = load();
        queue_some(h, 8, true);
        InvokeHandler stuck = load("forever");
        start_call(stuck);
        std::exit(0);
    }
    std::cerr << "unknown mode\n";
    return 2;
}
