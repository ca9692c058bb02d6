// expect: has no value to pass to the commit function
// A Future<void> as an input: there is nothing to hand to the commit function in its place.
#include <pyscheduler/pyscheduler.hpp>

void refused(pyscheduler::InvokeHandler& h, pyscheduler::Future<void> input) {
    (void)h.submit([] { return 1; }, [](pybind11::object r) { return r.cast<int>(); }, std::move(input));
}
