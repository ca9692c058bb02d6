// pyscheduler/detail/subinterpreter.hpp - the interpreter a pipeline runs in: the main
// one, or (CPython >= 3.12) a sub-interpreter with its own GIL (PEP 684).
//
// Sub-interpreters are created and ended through pybind11 3's py::subinterpreter,
// which also keeps pybind11's per-interpreter internals right. A handler's commit and
// executor threads each keep one thread state in its sub-interpreter for their whole
// life (py::subinterpreter_thread_state); other threads (synchronous invoke, the
// destructor) get a transient one per call.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>
#include <optional>
#include <stdexcept>

#include "pyscheduler/detail/config.hpp"
#include "pyscheduler/detail/gil.hpp"

#if PY_VERSION_HEX >= 0x030C0000 && defined(PYBIND11_HAS_SUBINTERPRETER_SUPPORT)
#include <pybind11/subinterpreter.h>
#define PYSCHEDULER_HAS_OWN_GIL 1
#endif

namespace pyscheduler::detail {

namespace py = pybind11;

#ifdef PYSCHEDULER_HAS_OWN_GIL

/// A sub-interpreter (py::subinterpreter) that keeps one idle "anchor" thread state
/// from its creation to its end, so that its list of thread states is never empty
/// while other threads come and go.
///
/// Why: CPython gives an interpreter's first thread state the memory preallocated in
/// the interpreter (_initial_thread) whenever its list of thread states is empty, and
/// up to 3.13.0 it resets that memory after unlinking it, outside the lock that
/// guards the list (CPython gh-126914). With transient thread states (synchronous
/// invoke from several threads) the list can go empty while one thread deletes the
/// initial state and another creates one: the second aborts with "init_threadstate:
/// thread state already initialized". pybind11 3 deletes its creation thread state on
/// 3.13 (on 3.12 it keeps it, which anchors the list the same way). With the anchor
/// in the list, every later thread state is allocated on its own.
class PYSCHEDULER_HIDDEN SubInterpreter {
public:
    explicit SubInterpreter(const PyInterpreterConfig& config) : interpreter_(py::subinterpreter::create(config)) {
        py::subinterpreter_scoped_activate in(interpreter_);  // the initial state, deleted at the end of the scope
        anchor_ = PyThreadState_New(PyInterpreterState_Get());
        if (anchor_ == nullptr) throw std::runtime_error("PyThreadState_New failed for a sub-interpreter");
    }
    SubInterpreter(const SubInterpreter&) = delete;
    SubInterpreter& operator=(const SubInterpreter&) = delete;
    ~SubInterpreter() {
        {
            py::subinterpreter_scoped_activate in(interpreter_);  // a transient state, not the anchor
            PyThreadState_Clear(anchor_);
            PyThreadState_Delete(anchor_);
        }
        // interpreter_ ends the interpreter now, with no thread state of ours left in it
    }

    const py::subinterpreter& get() const noexcept { return interpreter_; }

private:
    py::subinterpreter interpreter_;
    PyThreadState* anchor_ = nullptr;
};

/// A new isolated sub-interpreter with its own GIL: Python threads allowed, fork/exec
/// and daemon threads not, single-phase-init extension modules refused.
inline std::unique_ptr<SubInterpreter> create_own_gil_interpreter() {
    PyInterpreterConfig config{};
    config.use_main_obmalloc = 0;
    config.allow_fork = 0;
    config.allow_exec = 0;
    config.allow_threads = 1;
    config.allow_daemon_threads = 0;
    config.check_multi_interp_extensions = 1;
    config.gil = PyInterpreterConfig_OWN_GIL;
    return std::make_unique<SubInterpreter>(config);
}

/// One thread's persistent thread state in a pipeline's interpreter: nothing for the
/// main interpreter (gil.hpp keeps one per thread), a py::subinterpreter_thread_state
/// otherwise. Create and destroy it on the thread that uses it.
class PYSCHEDULER_HIDDEN ThreadContext {
public:
    explicit ThreadContext(SubInterpreter* sub) {
        if (sub == nullptr) {
            this_thread_state();
        } else {
            state_.emplace(sub->get());
        }
    }
    py::subinterpreter_thread_state* state() noexcept { return state_ ? &*state_ : nullptr; }

private:
    std::optional<py::subinterpreter_thread_state> state_;
};

/// Holds the GIL of a pipeline's interpreter for a scope, on any thread: the main
/// GIL (re-entrant GilHold), or the sub-interpreter's, swapping out whatever this
/// thread held before and restoring it afterwards.
class PYSCHEDULER_HIDDEN InterpreterHold {
public:
    InterpreterHold(SubInterpreter* sub, ThreadContext* context) {
        if (sub == nullptr) {
            main_.emplace();
        } else if (context != nullptr && context->state() != nullptr) {
            sub_.emplace(*context->state());
        } else {
            sub_.emplace(sub->get());  // transient thread state
        }
    }
    InterpreterHold(const InterpreterHold&) = delete;
    InterpreterHold& operator=(const InterpreterHold&) = delete;

private:
    std::optional<GilHold> main_;
    std::optional<py::subinterpreter_scoped_activate> sub_;
};

#else  // CPython 3.11: only the main interpreter

struct SubInterpreter {};

class PYSCHEDULER_HIDDEN ThreadContext {
public:
    explicit ThreadContext(SubInterpreter* /*sub*/) { this_thread_state(); }
};

class PYSCHEDULER_HIDDEN InterpreterHold {
public:
    InterpreterHold(SubInterpreter* /*sub*/, ThreadContext* /*context*/) {}
    InterpreterHold(const InterpreterHold&) = delete;
    InterpreterHold& operator=(const InterpreterHold&) = delete;

private:
    GilHold main_;
};

#endif

/// The interpreter one worker of a handler runs in, and the handler's function as
/// imported there: the main interpreter (no sub-interpreter; every Main worker holds
/// a reference to the one function), a sub-interpreter of the worker's own, or the
/// main interpreter with a process worker's proxy as the function (process.hpp).
/// Drops the function under its interpreter's GIL (a process worker's is closed
/// first: its child quits), then ends the sub-interpreter.
class PYSCHEDULER_HIDDEN WorkerInterpreter {
public:
    /// `fn` lives in `sub`, or in the main interpreter when `sub` is null. `process`:
    /// `fn` is a process worker's proxy.
    WorkerInterpreter(std::unique_ptr<SubInterpreter> sub, py::object fn, bool process = false) noexcept
        : sub_(std::move(sub)), fn_(std::move(fn)), process_(process) {}
    WorkerInterpreter(WorkerInterpreter&&) noexcept = default;
    WorkerInterpreter& operator=(WorkerInterpreter&&) = delete;
    ~WorkerInterpreter() {
        if (fn_) {
            InterpreterHold gil(sub_.get(), nullptr);
            if (process_) {
                try {
                    fn_.attr("close")();
                } catch (py::error_already_set& e) {  // the child is killed at exit at the latest
                    e.discard_as_unraisable("pyscheduler: closing a worker process");
                }
            }
            fn_ = py::object();
        }
        sub_.reset();  // no thread state of ours may be left in it
    }

    SubInterpreter* sub() const noexcept { return sub_.get(); }
    const py::object& function() const noexcept { return fn_; }

    /// Holds this interpreter's GIL for a scope, on any thread.
    InterpreterHold hold() const { return InterpreterHold(sub_.get(), nullptr); }

private:
    std::unique_ptr<SubInterpreter> sub_;  // null: the main interpreter
    py::object fn_;
    bool process_ = false;
};

}  // namespace pyscheduler::detail
