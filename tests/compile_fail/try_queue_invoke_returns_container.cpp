// expect: queue_invoke: the callback returns a type that holds Python objects
// Containers of Python objects are refused like the objects themselves.
#include <map>
#include <string>

#include <pyscheduler/pyscheduler.hpp>

void refused(pyscheduler::BasicInvokeHandler<pyscheduler::LightweightFuturePolicy>& h) {
    h.try_queue_invoke([] { return 1; }, [](pybind11::object r) {
        return std::map<std::string, pybind11::object>{{"result", r}};
    });
}
