// expect: the commit function returns a type that holds Python objects without being one
// A container of objects is not one object, so its commit would run without the GIL.
#include <vector>

#include <pyscheduler/pyscheduler.hpp>

void refused(pyscheduler::InvokeHandler& h) {
    h.queue_invoke([] { return std::vector<pybind11::object>{}; }, [](pybind11::object r) { return r.cast<int>(); });
}
