// A child process for tests/test_leak_detection.cpp: leaks on purpose, the way a bug
// in pyscheduler would, so the test can check that LeakSanitizer (with the project's
// suppressions) still reports it.
#include <pyscheduler/pyscheduler.hpp>

#include <iostream>
#include <string>

namespace py = pybind11;

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_TEST_PYTHON_DIR);
    auto h = python.loadPythonModule("pyscheduler_test_svd", "frobenius_squared", 4, 1);  // numpy loaded
    if (mode == "task_node") {
        // A queued item whose node is never completed nor freed.
        auto leaked = pyscheduler::detail::make_task<std::future<int>, int (*)(), int (*)(py::object)>(
            false, +[] { return 1; }, +[](py::object) { return 1; });
        std::cout << "leaked a task node at " << static_cast<void*>(leaked.first) << "\n";
    } else if (mode == "py_object") {
        // A Python object we own and never release.
        pyscheduler::detail::GilHold gil;
        PyObject* leaked = py::int_(123456789).release().ptr();
        std::cout << "leaked a Python int at " << static_cast<void*>(leaked) << "\n";
    } else if (mode != "none") {
        std::cerr << "unknown mode\n";
        return 2;
    }
    return 0;
}
