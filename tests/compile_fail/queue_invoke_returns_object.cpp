// expect: queue_invoke: the callback returns a type that holds Python objects
// A callback may not hand a pybind11 object to the future: get() runs without the GIL.
#include <pyscheduler/pyscheduler.hpp>

void refused(pyscheduler::InvokeHandler& h) {
    h.queue_invoke([] { return 1; }, [](pybind11::object r) { return r; });
}
