// expect: invoke\(callback, ...\): the callback returns a type that holds Python objects
#include <pyscheduler/pyscheduler.hpp>

void refused(const pyscheduler::InvokeHandler& h) {
    (void)h.invoke([](pybind11::object r) { return pybind11::dict(r); }, 1);
}
