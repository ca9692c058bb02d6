// pyscheduler/manager.hpp - PyManager: the process's embedded interpreter, and the
// factory of InvokeHandlers.
#pragma once

#include <pybind11/pybind11.h>

#include <chrono>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "pyscheduler/detail/config.hpp"
#include "pyscheduler/detail/gil.hpp"
#include "pyscheduler/detail/interpreter.hpp"
#include "pyscheduler/detail/pipeline.hpp"
#include "pyscheduler/detail/process.hpp"
#include "pyscheduler/detail/subinterpreter.hpp"
#include "pyscheduler/handler.hpp"
#include "pyscheduler/options.hpp"
#include "pyscheduler/policy.hpp"

namespace pyscheduler {

/// A cheap, copyable handle on the process's one Python interpreter.
///
/// The first PyManager in the process starts CPython (without Python's signal
/// handlers), or attaches to it when the process already runs Python. The
/// interpreter is finalized when the main thread exits the process, before static
/// destructors run, if no handler exists then; otherwise it is left running.
template <class Policy = DefaultPolicy>
class PYSCHEDULER_HIDDEN BasicPyManager {
public:
    using InvokeHandler = BasicInvokeHandler<Policy>;
    using policy_type = Policy;

    /// Starts or attaches to the interpreter. Safe to call from many threads at once.
    BasicPyManager() : process_(&detail::ensure_interpreter()), pauses_(&detail::pause_registry()) {}

    /// Appends `dir` to sys.path unless it is there already. `dir` is a path as the
    /// OS gives it (file-system encoding; undecodable bytes are kept, as os.fsdecode does).
    void add_path(const std::string& dir) const {
        if (dir.empty()) throw std::invalid_argument("pyscheduler: add_path: the directory is an empty string");
        detail::GilHold gil;
        pybind11::list path = pybind11::module_::import("sys").attr("path");
        pybind11::str entry = detail::path_to_python(dir);
        if (!path.contains(entry)) path.append(entry);
    }

    /// Imports `module`, looks up `function` in it, and starts a handler for it.
    InvokeHandler loadPythonModule(const std::string& module, const std::string& function = "invoke",
                                   std::size_t batch_size = 1, std::size_t prefetch_depth = 1) const {
        HandlerOptions options;
        options.batch_size = batch_size;
        options.prefetch_depth = prefetch_depth;
        return loadPythonModule(module, function, options);
    }

    /// As above, with every option. Throws std::invalid_argument when the options are
    /// invalid, or when the module cannot be imported, has no such attribute, or the
    /// attribute is not callable (the message names the module, the function and the
    /// Python error). OwnGil with N workers imports the module N times, once in each
    /// worker's sub-interpreter; Process starts N child processes and returns once each
    /// has imported it.
    InvokeHandler loadPythonModule(const std::string& module, const std::string& function,
                                   const HandlerOptions& options) const {
        validate(options);
        const std::string name = module + "." + function;
        std::vector<detail::WorkerInterpreter> interpreters;
        interpreters.reserve(options.workers);
        if (options.interpreter == InterpreterKind::OwnGil) {
            const std::vector<std::string> path = main_sys_path();
            for (std::size_t i = 0; i < options.workers; ++i) {
                interpreters.push_back(load_own_gil(module, function, name, path));
            }
        } else if (options.interpreter == InterpreterKind::Process) {
            detail::GilHold gil;
            const double timeout = std::chrono::duration<double>(options.call_timeout).count();
            for (std::size_t i = 0; i < options.workers; ++i) {
                interpreters.emplace_back(nullptr,
                                          detail::start_process_worker(module, function, name, i,
                                                                       options.max_restarts, timeout),
                                          true);
            }
        } else {
            detail::GilHold gil;
            pybind11::object fn = import_function(module, function, name);
            for (std::size_t i = 0; i < options.workers; ++i) interpreters.emplace_back(nullptr, fn);
        }
        return InvokeHandler(
            std::make_unique<detail::Pipeline<Policy>>(std::move(interpreters), name, options, *process_, *pauses_));
    }

    /// Pauses every handler of the process (of every manager, and of every shared
    /// library that includes pyscheduler), as InvokeHandler::pause() does, and every
    /// handler started until resume(). resume() resumes them all, including handlers
    /// paused on their own. A handler's own resume() overrides a manager's pause for it.
    void pause() const { pauses_->set_all(true); }
    void resume() const { pauses_->set_all(false); }
    /// Whether the manager's pause is on.
    bool is_paused() const {
        pauses_->lock();
        const bool on = pauses_->paused;
        pauses_->unlock();
        return on;
    }

private:
    /// `module.function`, checked to be callable; std::invalid_argument naming the
    /// Python error otherwise. The GIL of the interpreter to import in is held.
    static pybind11::object import_function(const std::string& module, const std::string& function,
                                            const std::string& name) {
        pybind11::object fn;
        try {
            fn = pybind11::module_::import(module.c_str()).attr(function.c_str());
        } catch (const pybind11::error_already_set& e) {
            throw std::invalid_argument("pyscheduler: cannot load " + name + ": " +
                                        detail::to_python_error(e, "importing it").what());
        }
        if (!PyCallable_Check(fn.ptr())) {
            throw std::invalid_argument("pyscheduler: cannot load " + name + ": it is not callable (it is a " +
                                        std::string(Py_TYPE(fn.ptr())->tp_name) + ")");
        }
        return fn;
    }

    /// The main interpreter's sys.path, for the sub-interpreters of OwnGil workers.
    static std::vector<std::string> main_sys_path() {
        std::vector<std::string> path;
        detail::GilHold gil;
        for (pybind11::handle entry : pybind11::module_::import("sys").attr("path")) {
            if (PyUnicode_Check(entry.ptr())) path.push_back(detail::path_from_python(entry));  // imports skip others
        }
        return path;
    }

    /// One OwnGil worker's interpreter: a new sub-interpreter whose sys.path is
    /// `path` (the main interpreter's), the module imported there.
    static detail::WorkerInterpreter load_own_gil(const std::string& module, const std::string& function,
                                                  const std::string& name, const std::vector<std::string>& path) {
#ifdef PYSCHEDULER_HAS_OWN_GIL
        std::unique_ptr<detail::SubInterpreter> sub;
        try {
            sub = detail::create_own_gil_interpreter();
        } catch (const std::exception& e) {
            throw std::runtime_error("pyscheduler: cannot load " + name + ": creating its sub-interpreter failed: " +
                                     e.what());
        }
        pybind11::object fn;
        {
            detail::InterpreterHold gil(sub.get(), nullptr);
            try {
                pybind11::list sys_path;
                for (const std::string& entry : path) sys_path.append(detail::path_to_python(entry));
                pybind11::module_::import("sys").attr("path") = sys_path;
                fn = import_function(module, function, name);
            } catch (const std::invalid_argument& e) {
                throw std::invalid_argument(std::string(e.what()) +
                                            " (in a sub-interpreter with its own GIL: InterpreterKind::OwnGil)");
            }
        }
        return detail::WorkerInterpreter(std::move(sub), std::move(fn));
#else
        (void)module;
        (void)function;
        (void)path;
        throw std::invalid_argument("pyscheduler: cannot load " + name +
                                    ": InterpreterKind::OwnGil needs CPython 3.12 or newer (this program embeds "
                                    "CPython " PY_VERSION ")");
#endif
    }

    static void validate(const HandlerOptions& o) {
        constexpr std::size_t limit = std::size_t{1} << 30;
        if (o.batch_size == 0) throw std::invalid_argument("pyscheduler: HandlerOptions::batch_size must be at least 1");
        if (o.prefetch_depth == 0) {
            throw std::invalid_argument("pyscheduler: HandlerOptions::prefetch_depth must be at least 1");
        }
        if (o.batch_size > limit / o.prefetch_depth) {
            throw std::invalid_argument("pyscheduler: HandlerOptions::batch_size * prefetch_depth must not exceed 2^30");
        }
        if (o.max_batch_delay.count() < 0) {
            throw std::invalid_argument("pyscheduler: HandlerOptions::max_batch_delay must not be negative");
        }
        if (o.queue_capacity > static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max())) {
            throw std::invalid_argument("pyscheduler: HandlerOptions::queue_capacity is too large");
        }
        if (o.queue_timeout.count() < 0 || o.queue_timeout > std::chrono::hours(24 * 365 * 100)) {
            throw std::invalid_argument("pyscheduler: HandlerOptions::queue_timeout must be between 0 and a century");
        }
        if (o.workers == 0) throw std::invalid_argument("pyscheduler: HandlerOptions::workers must be at least 1");
        if (o.workers > 1024) throw std::invalid_argument("pyscheduler: HandlerOptions::workers must not exceed 1024");
        if (o.interpreter != InterpreterKind::Process && o.call_timeout.count() != 0) {
            throw std::invalid_argument(
                "pyscheduler: HandlerOptions::call_timeout needs InterpreterKind::Process (a call running in this "
                "process cannot be stopped)");
        }
        if (o.call_timeout.count() < 0 || o.call_timeout > std::chrono::hours(24 * 365 * 100)) {
            throw std::invalid_argument("pyscheduler: HandlerOptions::call_timeout must be between 0 and a century");
        }
        if (o.max_restarts < 0) {
            throw std::invalid_argument("pyscheduler: HandlerOptions::max_restarts must not be negative");
        }
        if (o.batch_size * o.prefetch_depth > limit / o.workers) {
            throw std::invalid_argument(
                "pyscheduler: HandlerOptions::batch_size * prefetch_depth * workers must not exceed 2^30");
        }
    }

    detail::ProcessState* process_;
    detail::PauseRegistry* pauses_;  // looked up with the manager, so starting a handler takes no GIL for it
};

}  // namespace pyscheduler
