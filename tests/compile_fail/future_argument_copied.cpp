// expect: a pyscheduler::Future argument is moved into the item
// A Future has one reader: passing it by lvalue would have to copy it.
#include <pyscheduler/pyscheduler.hpp>

void refused(pyscheduler::InvokeHandler& h, pyscheduler::Future<int>& input) {
    (void)h.submit([](int x) { return x; }, [](pybind11::object r) { return r.cast<int>(); }, input);
}
