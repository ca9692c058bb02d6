// pyscheduler/errors.hpp - the exceptions pyscheduler puts into futures and throws.
//
// Every exception that crosses a thread carries strings only: no Python object is
// kept, so it can be copied, rethrown and destroyed on any thread without the GIL.
#pragma once

#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace pyscheduler {

/// Base of every pyscheduler-specific error.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
    virtual ~Error() = default;

    /// An independent copy (its own message buffer, not a shared one), thrown as the
    /// dynamic type. Used to give every future of a failed batch its own exception.
    virtual std::exception_ptr clone() const { return std::make_exception_ptr(Error(std::string(what()))); }
};

/// The Python function (or Python code run by a commit or callback) raised.
///
/// `what()` reads "<where> raised <Type>: <message>" followed by the Python
/// traceback. The parts are available separately.
class PythonError : public Error {
public:
    PythonError(std::string where, std::string type_name, std::string message, std::string traceback)
        : Error(compose(where, type_name, message, traceback)),
          parts_(std::make_shared<const Parts>(
              Parts{std::move(where), std::move(type_name), std::move(message), std::move(traceback)})) {}

    std::exception_ptr clone() const override {
        return std::make_exception_ptr(PythonError(parts_->where, parts_->type_name, parts_->message, parts_->traceback));
    }

    /// Qualified name of the Python exception type, e.g. "ValueError" or "mymod.MyError".
    const std::string& type_name() const noexcept { return parts_->type_name; }
    /// `str(exception)`.
    const std::string& message() const noexcept { return parts_->message; }
    /// The formatted traceback ("Traceback (most recent call last): ..."), possibly empty.
    const std::string& traceback() const noexcept { return parts_->traceback; }

private:
    struct Parts {
        std::string where;
        std::string type_name;
        std::string message;
        std::string traceback;
    };
    static std::string compose(const std::string& where, const std::string& type_name,
                               const std::string& message, const std::string& traceback) {
        std::string s = where + " raised " + type_name;
        if (!message.empty()) s += ": " + message;
        if (!traceback.empty()) s += "\n" + traceback;
        return s;
    }
    std::shared_ptr<const Parts> parts_;  // shared: copying an exception must not throw
};

/// The Python function returned something that is not a result per item: not a
/// sequence, or a sequence whose length differs from the batch's.
class ResultError : public Error {
public:
    using Error::Error;
    std::exception_ptr clone() const override { return std::make_exception_ptr(ResultError(std::string(what()))); }
};

/// The item was cancelled by `InvokeHandler::shutdown(ShutdownMode::Cancel)` before it ran.
class Cancelled : public Error {
public:
    using Error::Error;
    std::exception_ptr clone() const override { return std::make_exception_ptr(Cancelled(std::string(what()))); }
};

/// The item's deadline (ItemOptions::deadline or HandlerOptions::queue_timeout) passed
/// before it reached Python, so it did not run; or (InterpreterKind::Process) the call
/// it was part of ran longer than HandlerOptions::call_timeout, and its worker process
/// was killed.
class Timeout : public Error {
public:
    using Error::Error;
    std::exception_ptr clone() const override { return std::make_exception_ptr(Timeout(std::string(what()))); }
};

/// InterpreterKind::Process: the worker process died (a signal such as SIGSEGV or the
/// OOM killer's SIGKILL, os._exit, ...) while it ran the call the item was part of, or
/// it is down for good (HandlerOptions::max_restarts). `what()` names the process and
/// its exit status or signal. Only that call's items fail; the worker is restarted.
class WorkerLost : public Error {
public:
    using Error::Error;
    std::exception_ptr clone() const override { return std::make_exception_ptr(WorkerLost(std::string(what()))); }
};

/// An input of the item (a Future or SharedFuture passed as one of its arguments)
/// failed or was cancelled, so the item did not run. `what()` names the handler, the
/// argument and the input's own error (itself a DependencyFailed when the failure came
/// from further up the graph).
class DependencyFailed : public Error {
public:
    using Error::Error;
    std::exception_ptr clone() const override {
        return std::make_exception_ptr(DependencyFailed(std::string(what())));
    }
};

}  // namespace pyscheduler
