// expect: an input's value holds Python objects
// GilSafe results stay in the main interpreter; inputs may cross into any handler's.
#include <pyscheduler/pyscheduler.hpp>

void refused(pyscheduler::InvokeHandler& h, pyscheduler::SharedFuture<pyscheduler::GilSafe<>> input) {
    (void)h.submit([](const pyscheduler::GilSafe<>&) { return 1; }, [](pybind11::object r) { return r.cast<int>(); },
                   input);
}
