// The program both consumption tests build: uses the library through its public
// header only, with Python's own operator.add as the function.
#include <pyscheduler/pyscheduler.hpp>

#include <iostream>

int main() {
    pyscheduler::PyManager python;
    auto add = python.loadPythonModule("operator", "add");
    const auto sum = add.invoke<long>(40, 2);
    auto batched = python.loadPythonModule("builtins", "list", 4, 1);  // list(items) == items
    const auto back = batched.queue_invoke([] { return 7; }, [](pybind11::object o) { return o.cast<int>(); }).get();
    std::cout << "consumer: " << sum << " " << back << "\n";
    return sum == 42 && back == 7 ? 0 : 1;
}
