// Shared helpers of the pyscheduler test suites.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>
#include <pybind11/stl.h>
#include <pyscheduler/pyscheduler.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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

/// A handler of pyscheduler_test_own_gil.<function>: pure Python, so it loads in an
/// own-GIL interpreter as well as in the main one (read_or_echo blocks on a Pipe).
inline InvokeHandler load_own_gil_module(const std::string& function, const HandlerOptions& options = {}) {
    return python().loadPythonModule("pyscheduler_test_own_gil", function, options);
}

/// Skips the test when `kind` is InterpreterKind::OwnGil and the interpreter predates
/// own-GIL sub-interpreters (CPython 3.12).
#if PY_VERSION_HEX >= 0x030C0000
#define PYSCHEDULER_REQUIRE_OWN_GIL(kind) (void)(kind)
#else
#define PYSCHEDULER_REQUIRE_OWN_GIL(kind)                                \
    if ((kind) == InterpreterKind::OwnGil) {                              \
        GTEST_SKIP() << "own-GIL sub-interpreters need CPython 3.12+";   \
    }
#endif

/// Commit function that stages the argument v.
inline auto commit_value(int v) {
    return [v] { return v; };
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

/// Waits (yielding) until `done()` holds, a condition the code under test brings
/// about; false after kNoHang instead of hanging.
template <class F>
bool eventually(F done) {
    const auto until = std::chrono::steady_clock::now() + kNoHang;
    while (!done()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::yield();
    }
    return true;
}

/// For std::future and pyscheduler::Future alike.
template <class F>
bool completes(F& f) {
    return f.wait_for(kNoHang) == std::future_status::ready;
}

/// A pipe whose read end a Python function (pyscheduler_test_own_gil.read_or_echo)
/// blocks on (GIL released) until the test writes a byte: a batch that stays in
/// Python exactly as long as the test wants.
struct Pipe {
    int fds[2] = {-1, -1};
    Pipe() { EXPECT_EQ(::pipe(fds), 0); }
    ~Pipe() {
        release(1);  // never leave a batch blocked behind a failed assertion
        ::close(fds[0]);
        ::close(fds[1]);
    }
    int read_end() const { return fds[0]; }
    void release(unsigned char byte) {
        if (released_) return;
        released_ = true;
        EXPECT_EQ(::write(fds[1], &byte, 1), 1);
    }

private:
    bool released_ = false;
};

/// What shutdown_while_producers_race counted.
struct RaceCounts {
    long values = 0;     // futures that got the expected value
    long cancelled = 0;  // futures that failed with Cancelled
    long wrong = 0;      // anything else
};

/// Four producers each queue `items` items (commit i, callback cast to long) while this
/// thread shuts the handler down with `mode` once a quarter of them is queued. Every future
/// must complete with `expected(i)` or Cancelled (Drain: refused, never queued).
template <class Handler, class Expected>
RaceCounts shutdown_while_producers_race(Handler& h, int items, Expected expected,
                                         ShutdownMode mode = ShutdownMode::Cancel) {
    std::atomic<long> values{0}, cancelled{0}, wrong{0};
    std::vector<std::thread> producers;
    for (int p = 0; p < 4; ++p) {
        producers.emplace_back([&] {
            std::vector<std::pair<int, std::future<long>>> futures;
            for (int i = 0; i < items; ++i) futures.emplace_back(i, h.queue_invoke([i] { return i; }, cast_to<long>()));
            for (auto& [i, f] : futures) {
                try {
                    if (f.get() == expected(i)) {
                        ++values;
                    } else {
                        ++wrong;
                    }
                } catch (const Cancelled&) {
                    ++cancelled;
                }
            }
        });
    }
    // Shut down while they queue: once a quarter of the items is in.
    while (h.get_queue_stats().total_enqueued < static_cast<std::uint64_t>(items)) std::this_thread::yield();
    h.shutdown(mode);
    for (auto& t : producers) t.join();
    return {values.load(), cancelled.load(), wrong.load()};
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
