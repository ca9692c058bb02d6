// add: synchronous calls. invoke<R>(args...) converts the arguments with pybind11,
// calls the Python function on this thread (taking the GIL for the call) and casts
// the result to R; invoke(callback, args...) hands the raw result to a callback.
#include <pyscheduler/pyscheduler.hpp>

#include <iostream>
#include <string>

int main() {
    pyscheduler::PyManager python;           // starts the embedded interpreter
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);  // where add_module.py lives

    auto add = python.loadPythonModule("add_module", "add");
    std::cout << "add(3000, -1234) = " << add.invoke<int64_t>(3000, -1234) << "\n";
    std::cout << "add(0.5, 0.25)   = " << add.invoke<double>(0.5, 0.25) << "\n";

    auto greet = python.loadPythonModule("add_module", "greet");
    std::string s = greet.invoke([](pybind11::object o) { return o.cast<std::string>(); }, "hello", " world");
    std::cout << "greet(...)       = " << s << "\n";

    try {
        add.invoke<int>("text", 1);  // Python raises TypeError
    } catch (const pyscheduler::PythonError& e) {
        std::cout << "add(\"text\", 1)  -> PythonError " << e.type_name() << ": " << e.message() << "\n";
    }
}
