// A child process for tests/test_environment.cpp: prints which Python environment
// the embedded interpreter uses, whether the venv-only marker module imports, and
// whether the module named by its first argument (if any) imports.
#include <pyscheduler/pyscheduler.hpp>

#include <iostream>

namespace py = pybind11;

int main(int argc, char** argv) {
    try {
        pyscheduler::PyManager python;
        auto prefix = python.loadPythonModule("sys", "getrecursionlimit");  // any callable: starts Python
        pyscheduler::detail::GilHold gil;
        py::module_ sys = py::module_::import("sys");
        std::cout << "prefix=" << sys.attr("prefix").cast<std::string>() << "\n";
        {  // a process worker's own sys.prefix (its site-packages, as sysconfig derives it from that)
            pyscheduler::HandlerOptions options;
            options.interpreter = pyscheduler::InterpreterKind::Process;
            auto worker = python.loadPythonModule("sysconfig", "get_path", options);
            std::cout << "worker purelib=" << worker.invoke<std::string>("purelib") << "\n";
        }
        try {
            py::module_ marker = py::module_::import("pyscheduler_venv_marker");
            std::cout << "marker=" << marker.attr("WHERE").cast<std::string>() << "\n";
        } catch (const py::error_already_set&) {
            std::cout << "marker=absent\n";
        }
        if (argc > 1) {
            try {
                py::module_::import(argv[1]);
                std::cout << "import=present\n";
            } catch (const py::error_already_set&) {
                std::cout << "import=absent\n";
            }
        }
        return 0;
    } catch (const std::exception& e) {
        std::cout << "error=" << e.what() << "\n";
        return 3;
    }
}
