// A plugin: a shared library that includes pyscheduler and knows nothing of any
// other plugin. Built twice (plugin_a, plugin_b) with hidden symbols, so each has
// its own copy of every inline static of the headers; they must still share the
// process's one interpreter.
#include <pyscheduler/pyscheduler.hpp>

#include <cstring>
#include <string>

namespace py = pybind11;

/// Returns "<id(sys)>/<interpreter id>" as seen from this plugin, computed through a
/// handler's pipeline. The string is written into `out`.
extern "C" __attribute__((visibility("default"))) int plugin_identity(char* out, int size) {
    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);
    auto handler = python.loadPythonModule("whoami", "interpreter_identity", 4, 1);
    std::string id = handler.queue_invoke([] { return 0; }, [](py::object o) { return o.cast<std::string>(); }).get();
    std::string message = std::string(PLUGIN_NAME) + " sees " + id;
    std::strncpy(out, message.c_str(), static_cast<std::size_t>(size) - 1);
    out[size - 1] = '\0';
    return 0;
}
