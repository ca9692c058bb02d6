// expect: queue_invoke: the callback returns a type that holds Python objects
// A struct of the user's own is refused once it declares what it holds.
#include <pyscheduler/pyscheduler.hpp>

struct Detection {
    int label;
    pybind11::object box;
};
template <>
struct pyscheduler::owns_python_references<Detection> : std::true_type {};

void refused(pyscheduler::InvokeHandler& h) {
    h.queue_invoke([] { return 1; }, [](pybind11::object r) { return Detection{1, r}; });
}
