// pyscheduler/detail/gil.hpp - per-thread Python thread states and GIL holds.
//
// Principle: a thread that calls into Python keeps one PyThreadState for its whole
// life. Creating and destroying a thread state per call (what PyGILState_Ensure /
// Release do on a thread that has none) costs microseconds; restoring a kept one
// costs one GIL acquisition.
//
// The thread state is registered with CPython's PyGILState machinery, so pybind11's
// gil_scoped_acquire/release and PyGILState_Ensure on the same thread find and
// reuse it instead of creating another one.
#pragma once

#include <Python.h>

namespace pyscheduler::detail {

/// Whether the calling thread holds the GIL. Safe to call without the GIL.
///
/// Not PyGILState_Check(): CPython turns that check off (it always answers yes) once
/// a sub-interpreter exists. On 3.12+ the current thread state is thread-local; on
/// 3.11 it is process-wide (whoever holds the GIL), so it is compared with this
/// thread's own state.
inline bool this_thread_holds_gil() noexcept {
#if PY_VERSION_HEX >= 0x030D0000
    return PyThreadState_GetUnchecked() != nullptr;
#elif PY_VERSION_HEX >= 0x030C0000
    return _PyThreadState_UncheckedGet() != nullptr;
#else
    PyThreadState* current = _PyThreadState_UncheckedGet();
    return current != nullptr && current == PyGILState_GetThisThreadState();
#endif
}

/// Keeps this thread's PyThreadState alive until the thread exits.
///
/// It takes one PyGILState count on the thread's state (creating the state when the
/// thread has none, adopting it when it has one, e.g. the main thread's), so nobody
/// else's PyGILState_Release or gil_scoped_acquire can delete it under us, and gives
/// the count back at thread exit - which deletes the state if the count was ours alone.
class ThreadStateSlot {
public:
    ThreadStateSlot() = default;
    ThreadStateSlot(const ThreadStateSlot&) = delete;
    ThreadStateSlot& operator=(const ThreadStateSlot&) = delete;

    ~ThreadStateSlot() {
        // After (or during) Py_Finalize every thread state is gone already; touching
        // ours would be a use-after-free, and taking the GIL could block forever.
        if (state_ == nullptr || Py_IsInitialized() == 0) return;
        if (!this_thread_holds_gil()) PyEval_RestoreThread(state_);
        PyGILState_Release(PyGILState_UNLOCKED);  // releases the GIL too
    }

    /// This thread's thread state. The first call takes the GIL once, so it must not
    /// be made while this thread holds the GIL.
    PyThreadState* get() {
        if (state_ == nullptr) {
            PyGILState_Ensure();
            state_ = PyThreadState_Get();
            PyEval_SaveThread();
        }
        return state_;
    }

private:
    PyThreadState* state_ = nullptr;
};

/// The calling thread's persistent thread state.
inline PyThreadState* this_thread_state() {
    thread_local ThreadStateSlot slot;
    return slot.get();
}

/// Holds the GIL for a scope, using the thread's persistent thread state.
/// Re-entrant: does nothing when the thread holds the GIL already.
class GilHold {
public:
    GilHold() {
        if (!this_thread_holds_gil()) {
            acquired_ = this_thread_state();
            PyEval_RestoreThread(acquired_);
        }
    }
    ~GilHold() {
        if (acquired_ != nullptr) PyEval_SaveThread();
    }
    GilHold(const GilHold&) = delete;
    GilHold& operator=(const GilHold&) = delete;

private:
    PyThreadState* acquired_ = nullptr;
};

/// Releases the GIL for a scope if this thread holds it (e.g. before blocking on
/// another thread that needs the GIL), and takes it back afterwards.
class GilRelease {
public:
    GilRelease() noexcept {
        if (this_thread_holds_gil()) saved_ = PyEval_SaveThread();
    }
    ~GilRelease() {
        if (saved_ != nullptr) PyEval_RestoreThread(saved_);
    }
    GilRelease(const GilRelease&) = delete;
    GilRelease& operator=(const GilRelease&) = delete;

private:
    PyThreadState* saved_ = nullptr;
};

}  // namespace pyscheduler::detail
