// pyscheduler/detail/config.hpp - compiler and platform macros and helpers.
#pragma once

#include <thread>

#if defined(__linux__)
#include <pthread.h>
#endif

// Classes that hold pybind11 objects get hidden visibility, like pybind11's own
// namespace: each shared object that includes pyscheduler keeps its own private copy
// of the templates (the state they must share lives in the interpreter instead, see
// detail/interpreter.hpp), and GCC does not warn about a type more visible than its
// fields.
#if defined(__GNUC__) || defined(__clang__)
#define PYSCHEDULER_HIDDEN __attribute__((visibility("hidden")))
#else
#define PYSCHEDULER_HIDDEN
#endif

namespace pyscheduler::detail {

/// Names `thread` as top -H, gdb and perf show it (Linux keeps 15 characters):
/// pys-commit, pys-exec-<worker>, pys-spawner. Named by the thread that starts it,
/// so the name is there once the start returns.
inline void name_thread(std::thread& thread, const char* name) noexcept {
#if defined(__linux__)
    pthread_setname_np(thread.native_handle(), name);
#else
    (void)thread;
    (void)name;
#endif
}

}  // namespace pyscheduler::detail
