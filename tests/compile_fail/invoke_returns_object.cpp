// expect: invoke<R>: R holds Python objects
// invoke<R>'s result leaves the call's GIL hold for a caller that may not hold the GIL.
#include <pyscheduler/pyscheduler.hpp>

void refused(const pyscheduler::InvokeHandler& h) { (void)h.invoke<pybind11::list>(1); }
