// Shared helpers of the pyscheduler test suites.
#pragma once

#include <gtest/gtest.h>
#include <pybind11/stl.h>
#include <pyscheduler/pyscheduler.hpp>

#include <chrono>
#include <future>
#include <string>

namespace pyscheduler::test {

namespace py = pybind11;

/// The manager every test uses (one per policy, all on the one interpreter); its
/// sys.path holds tests/python.
template <class Policy = DefaultPolicy>
BasicPyManager<Policy>& python() {
    static BasicPyManager<Policy> manager = [] {
        BasicPyManager<Policy> m;
        m.add_path(PYSCHEDULER_TEST_PYTHON_DIR);
        return m;
    }();
    return manager;
}

/// A handler of pyscheduler_test_funcs.<function>.
template <class Policy = DefaultPolicy>
BasicInvokeHandler<Policy> load(const std::string& function, std::size_t batch_size = 1,
                                std::size_t prefetch_depth = 1) {
    return python<Policy>().loadPythonModule("pyscheduler_test_funcs", function, batch_size, prefetch_depth);
}

template <class Policy = DefaultPolicy>
BasicInvokeHandler<Policy> load(const std::string& function, const HandlerOptions& options) {
    return python<Policy>().loadPythonModule("pyscheduler_test_funcs", function, options);
}

/// Callback that casts the result to T.
template <class T>
auto cast_to() {
    return [](py::object o) { return o.cast<T>(); };
}

/// Calls f(); expects it to throw E, and returns the exception's what().
template <class E, class F>
std::string what_of(F&& f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "threw another exception type: " << e.what();
        return {};
    }
    ADD_FAILURE() << "did not throw";
    return {};
}

/// A generous upper bound for "this future must complete": a hang fails the test
/// instead of blocking ctest until its timeout.
inline constexpr auto kNoHang = std::chrono::seconds(60);

/// For std::future and pyscheduler::Future alike.
template <class F>
bool completes(F& f) {
    return f.wait_for(kNoHang) == std::future_status::ready;
}

/// Closes the gate of gated_identity; reopens it on destruction so no test can leave
/// a batch stuck in Python. Declare it after the handler it gates: it must open before
/// the handler's destructor drains (or a failed assertion would hang the test).
struct PYSCHEDULER_HIDDEN Gate {
    InvokeHandler close = load("close_gate");
    InvokeHandler open_ = load("open_gate");
    InvokeHandler entered = load("wait_until_entered");
    Gate() { close.invoke<void>(); }
    ~Gate() { open(); }
    void open() { open_.invoke<void>(); }
    void wait_until_entered() { entered.invoke<void>(); }  // blocks with the GIL released (Event.wait)
};

}  // namespace pyscheduler::test
