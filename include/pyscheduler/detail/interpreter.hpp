// pyscheduler/detail/interpreter.hpp - starting, sharing and finalizing the one
// CPython interpreter of the process.
//
// Header-only libraries get one copy of every inline static per shared object when
// symbols are hidden, so two plugins that both include pyscheduler would each believe
// they own Python. The process-wide facts therefore live in the interpreter itself: a
// capsule in the interpreter's state dict, under a versioned key. Whichever shared
// object comes first creates it; the others find it by name.
#pragma once

#include <pybind11/embed.h>

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "pyscheduler/detail/gil.hpp"
#include "pyscheduler/errors.hpp"

namespace pyscheduler::detail {

namespace py = pybind11;

/// Facts shared by every copy of pyscheduler in the process. Never freed: threads and
/// exit handlers of any shared object may still read it late in process teardown.
/// Change the layout only together with the key below.
struct ProcessState {
    std::atomic<long> live_handlers{0};  // handlers constructed and not yet destroyed
    bool owns_interpreter = false;       // pyscheduler called Py_Initialize
    pthread_t init_thread{};             // the thread that did
    PyThreadState* init_tstate = nullptr;
};

inline constexpr const char* kProcessStateKey = "pyscheduler.process_state.v2";  // v1 counted running handlers

/// GIL held. The process state stored in the interpreter, created if absent.
inline ProcessState* find_or_create_process_state() {
    PyObject* dict = PyInterpreterState_GetDict(PyInterpreterState_Get());
    if (dict == nullptr) throw std::runtime_error("pyscheduler: no interpreter state dict");
    PyObject* cap = PyDict_GetItemString(dict, kProcessStateKey);  // borrowed
    if (cap != nullptr) {
        auto* st = static_cast<ProcessState*>(PyCapsule_GetPointer(cap, kProcessStateKey));
        if (st == nullptr) throw py::error_already_set();
        return st;
    }
    auto* st = new ProcessState();
    py::capsule capsule(st, kProcessStateKey);  // no destructor: see ProcessState
    if (PyDict_SetItemString(dict, kProcessStateKey, capsule.ptr()) != 0) throw py::error_already_set();
    return st;
}

inline std::atomic<ProcessState*>& cached_process_state() {
    static std::atomic<ProcessState*> cached{nullptr};
    return cached;
}

/// One handler's pause switch in the PauseRegistry.
struct PauseNode {
    PauseNode* prev = nullptr;
    PauseNode* next = nullptr;
    void* self = nullptr;
    void (*set_paused)(void* self, bool paused) = nullptr;
};

/// Every handler of the process, for BasicPyManager::pause()/resume(). Stored in the
/// interpreter like ProcessState, so that shared libraries which each include
/// pyscheduler share it, and made of plain words (no standard-library types), so its
/// layout is the same in every copy. A spin lock guards the list: taken when a handler
/// starts or ends and by the manager's pause()/resume(), never on the data path.
struct PauseRegistry {
    std::atomic<bool> locked{false};
    bool paused = false;  // the manager's switch: handlers that start while it is on start paused
    PauseNode* head = nullptr;

    void lock() noexcept {
        while (locked.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
    }
    void unlock() noexcept { locked.store(false, std::memory_order_release); }

    /// Lists `node`; returns the manager's switch, for the handler to start with.
    bool add(PauseNode* node) noexcept {
        lock();
        node->prev = nullptr;
        node->next = head;
        if (head) head->prev = node;
        head = node;
        const bool on = paused;
        unlock();
        return on;
    }
    void remove(PauseNode* node) noexcept {
        lock();
        if (node->prev) {
            node->prev->next = node->next;
        } else {
            head = node->next;
        }
        if (node->next) node->next->prev = node->prev;
        unlock();
    }
    /// Sets the manager's switch and every listed handler's.
    void set_all(bool on) noexcept {
        lock();
        paused = on;
        for (PauseNode* n = head; n != nullptr; n = n->next) n->set_paused(n->self, on);
        unlock();
    }
};

inline constexpr const char* kPauseRegistryKey = "pyscheduler.pause_registry.v1";

/// The process's PauseRegistry (found in, or added to, the interpreter's dict once per
/// copy of pyscheduler; the GIL is taken for that).
inline PauseRegistry& pause_registry() {
    static std::atomic<PauseRegistry*> cached{nullptr};
    if (PauseRegistry* r = cached.load(std::memory_order_acquire)) return *r;
    GilHold gil;
    PyObject* dict = PyInterpreterState_GetDict(PyInterpreterState_Main());
    if (dict == nullptr) throw std::runtime_error("pyscheduler: no interpreter state dict");
    PauseRegistry* r = nullptr;
    if (PyObject* cap = PyDict_GetItemString(dict, kPauseRegistryKey)) {  // borrowed
        r = static_cast<PauseRegistry*>(PyCapsule_GetPointer(cap, kPauseRegistryKey));
        if (r == nullptr) throw py::error_already_set();
    } else {
        r = new PauseRegistry();  // lives as long as the process, as ProcessState does
        py::capsule capsule(r, kPauseRegistryKey);
        if (PyDict_SetItemString(dict, kPauseRegistryKey, capsule.ptr()) != 0) throw py::error_already_set();
    }
    cached.store(r, std::memory_order_release);
    return *r;
}

/// Ends the interpreter when the process exits, if pyscheduler started it.
///
/// Python must be finalized before the static destructors of the extension modules
/// it loaded run: they may own Python objects (scipy's _uarray keeps a static map of
/// them) and Python's own module teardown still uses those statics, so finalizing
/// after them frees memory twice. A `python` process finalizes before exit() for that
/// reason. Modules are imported after Python started, so their destructors were
/// registered after any std::atexit handler of ours and run before it. What runs
/// earlier than every one of them is the exiting thread's thread_local destructors:
/// glibc's exit() calls those first. So the thread that started Python, when it is
/// the process's main thread, gets a thread_local whose destructor finalizes - at
/// exit(), or when main() returns - provided no handler exists then (a handler holds
/// Python objects, and its threads may be in Python). In every other case (a handler
/// with static storage duration or leaked, std::exit with handlers on the stack,
/// Python started on another thread) Python is left running for the OS to reclaim,
/// after flushing sys.stdout and sys.stderr so nothing printed is lost: static
/// destructors run with the interpreter still alive, and nothing is freed twice.
/// (A main thread that ends with pthread_exit() while others go on also runs the
/// thread_local destructor; with no handler left, Python is finalized then.)
inline void finalize_or_flush_at_exit(bool may_finalize) noexcept {
    ProcessState* st = cached_process_state().load(std::memory_order_acquire);
    if (st == nullptr || !st->owns_interpreter || Py_IsInitialized() == 0) return;
    if (may_finalize && pthread_equal(pthread_self(), st->init_thread) != 0 &&
        st->live_handlers.load(std::memory_order_acquire) == 0) {
        if (!this_thread_holds_gil()) PyEval_RestoreThread(st->init_tstate);
        try {
            py::finalize_interpreter();
        } catch (...) {  // nothing sensible is left to do at exit
        }
        return;
    }
    GilHold gil;
    for (const char* name : {"stdout", "stderr"}) {
        PyObject* stream = PySys_GetObject(name);  // borrowed
        if (stream == nullptr || stream == Py_None) continue;
        PyObject* r = PyObject_CallMethod(stream, "flush", nullptr);
        if (r == nullptr) PyErr_Clear();
        Py_XDECREF(r);
    }
}

/// The main thread's thread_local that finalizes Python first thing in exit().
struct FinalizeAtMainThreadExit {
    ~FinalizeAtMainThreadExit() { finalize_or_flush_at_exit(/*may_finalize=*/true); }
};

inline void arm_finalize_at_exit() {
    if (::getpid() == ::gettid()) {  // the main thread: its thread_locals die in exit()
        // Constructed here, on the first pass, so it exists only on this thread.
        [[maybe_unused]] thread_local FinalizeAtMainThreadExit finalizer;
    }
    // Runs after every static destructor: too late to finalize (see above), in time to
    // flush what Python printed when the thread_local did not finalize.
    std::atexit([] { finalize_or_flush_at_exit(/*may_finalize=*/false); });
}

/// The Python environment to embed, as the path of its interpreter executable; empty
/// for CPython's own default (the prefix of the libpython that is linked). In order:
///   1. $PYSCHEDULER_PYTHON, the explicit run-time override;
///   2. $VIRTUAL_ENV/bin/python, an activated virtual environment;
///   3. the interpreter the build was configured with (PYSCHEDULER_PYTHON_EXECUTABLE,
///      set by the CMake target), when it still exists.
/// CPython derives sys.prefix and site-packages from it, reading pyvenv.cfg for a venv,
/// so no PYTHONPATH or PYTHONHOME is needed. A path from 1 or 2 that is not an
/// executable file is an error naming it.
inline std::string python_executable_to_embed() {
    auto usable = [](const std::string& path) { return ::access(path.c_str(), X_OK) == 0; };
    if (const char* override_path = std::getenv("PYSCHEDULER_PYTHON"); override_path && *override_path) {
        if (!usable(override_path)) {
            throw std::runtime_error(std::string("pyscheduler: PYSCHEDULER_PYTHON=") + override_path +
                                     " is not an executable Python interpreter");
        }
        return override_path;
    }
    if (const char* venv = std::getenv("VIRTUAL_ENV"); venv && *venv) {
        const std::string path = std::string(venv) + "/bin/python";
        if (!usable(path)) {
            throw std::runtime_error("pyscheduler: VIRTUAL_ENV=" + std::string(venv) + " has no interpreter at " +
                                     path);
        }
        return path;
    }
#ifdef PYSCHEDULER_PYTHON_EXECUTABLE
    if (usable(PYSCHEDULER_PYTHON_EXECUTABLE)) return PYSCHEDULER_PYTHON_EXECUTABLE;
#endif
    return {};
}

/// GIL not held. Starts CPython, without its signal handlers, on the calling thread.
inline ProcessState* initialize_interpreter() {
    const std::string executable = python_executable_to_embed();
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0;  // the host program owns SIGINT & co.
    config.parse_argv = 0;
    PyStatus status = PyStatus_Ok();
    if (!executable.empty()) status = PyConfig_SetBytesString(&config, &config.executable, executable.c_str());
    if (PyStatus_Exception(status) == 0) status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status) != 0) {
        throw std::runtime_error(std::string("pyscheduler: cannot initialize Python") +
                                 (executable.empty() ? "" : " for " + executable) + ": " +
                                 (status.err_msg != nullptr ? status.err_msg : "unknown error"));
    }
    ProcessState* st = nullptr;
    try {
        st = find_or_create_process_state();
    } catch (...) {
        PyEval_SaveThread();
        throw;
    }
    st->owns_interpreter = true;
    st->init_thread = pthread_self();
    st->init_tstate = PyThreadState_Get();
    arm_finalize_at_exit();
    PyEval_SaveThread();  // the init thread keeps its state; other threads may now run Python
    return st;
}

/// The process state; starts (or attaches to) the interpreter on first use.
/// Thread-safe within one shared object. Across shared objects, the first call that
/// starts the interpreter must not race another shared object's first call.
inline ProcessState& ensure_interpreter() {
    auto& cached = cached_process_state();
    if (ProcessState* st = cached.load(std::memory_order_acquire)) return *st;
    static std::mutex init_mutex;
    std::lock_guard<std::mutex> lock(init_mutex);
    if (ProcessState* st = cached.load(std::memory_order_relaxed)) return *st;
    ProcessState* st = nullptr;
    if (Py_IsInitialized() == 0) {
        st = initialize_interpreter();
    } else {
        GilHold gil;  // attach: Python is running (another copy of us, or a Python host)
        st = find_or_create_process_state();
    }
    cached.store(st, std::memory_order_release);
    return *st;
}

/// GIL held. str(obj) as UTF-8, for messages. Any str survives: what UTF-8 cannot
/// encode (lone surrogates, as os.fsdecode makes from undecodable bytes) is escaped
/// with backslashreplace, the rest kept intact. `fallback` when str() itself raises
/// (the error is cleared).
inline std::string utf8_of(py::handle obj, const char* fallback) {
    if (auto text = py::reinterpret_steal<py::object>(PyObject_Str(obj.ptr()))) {
        auto bytes =
            py::reinterpret_steal<py::bytes>(PyUnicode_AsEncodedString(text.ptr(), "utf-8", "backslashreplace"));
        if (bytes) return std::string(bytes);
    }
    PyErr_Clear();
    return fallback;
}

/// GIL held. A PythonError (strings only) for the Python exception `value` of type
/// `type` with traceback `trace` (either may be null). Each part is read on its own:
/// an exception whose str() raises keeps its type and traceback.
inline PythonError python_error_from(py::handle type, py::handle value, py::handle trace, const std::string& where) {
    std::string type_name = "<unknown exception>";
    if (type) {
        const std::string module = utf8_of(py::getattr(type, "__module__", py::none()), "?");
        const std::string qualname = utf8_of(py::getattr(type, "__qualname__", py::none()), "?");
        type_name = module == "builtins" ? qualname : module + "." + qualname;
    }
    std::string message = value ? utf8_of(value, "<str() of the exception raised>") : std::string();
    std::string traceback;
    try {
        auto or_none = [](py::handle h) { return h ? h : py::handle(Py_None); };
        py::list lines = py::module_::import("traceback").attr("format_exception")(or_none(type), or_none(value),
                                                                                 or_none(trace));
        for (py::handle line : lines) traceback += utf8_of(line, "");
        while (!traceback.empty() && traceback.back() == '\n') traceback.pop_back();
    } catch (const py::error_already_set&) {  // formatting failed: the other parts stand
    }
    return PythonError(where, std::move(type_name), std::move(message), std::move(traceback));
}

/// GIL held. A file-system path (bytes in the file-system encoding, as the OS gives
/// them) as a Python str, and back: undecodable bytes round-trip as lone surrogates
/// (os.fsdecode / os.fsencode).
inline py::str path_to_python(const std::string& path) {
    auto s = py::reinterpret_steal<py::str>(
        PyUnicode_DecodeFSDefaultAndSize(path.data(), static_cast<Py_ssize_t>(path.size())));
    if (!s) throw py::error_already_set();
    return s;
}
inline std::string path_from_python(py::handle path) {
    PyObject* bytes = nullptr;
    if (PyUnicode_FSConverter(path.ptr(), &bytes) == 0) throw py::error_already_set();
    return std::string(py::reinterpret_steal<py::bytes>(bytes));
}

/// GIL held. Turns a caught Python exception into a PythonError that holds only strings.
inline PythonError to_python_error(const py::error_already_set& e, const std::string& where) {
    return python_error_from(e.type(), e.value(), e.trace(), where);
}

/// Type names (as python_error_from writes them) of the errors a process worker's
/// proxy raises (see process.hpp), and the C++ errors they stand for.
inline constexpr const char* kWorkerLostType = "_pyscheduler_process_v1.WorkerLost";
inline constexpr const char* kCallTimeoutType = "_pyscheduler_process_v1.CallTimeout";

/// GIL held. A caught Python exception as the C++ exception it stands for: WorkerLost
/// or Timeout from a process worker, PythonError otherwise.
inline std::exception_ptr python_exception(const py::error_already_set& e, const std::string& where) {
    PythonError error = to_python_error(e, where);
    if (error.type_name() == kWorkerLostType) return std::make_exception_ptr(WorkerLost(error.message()));
    if (error.type_name() == kCallTimeoutType) return std::make_exception_ptr(Timeout(error.message()));
    return std::make_exception_ptr(std::move(error));
}

/// Call inside a catch block. The exception in flight, with Python exceptions turned
/// into C++ ones by python_exception (the GIL is taken for that if this thread does
/// not hold it).
inline std::exception_ptr capture_exception(const std::string& where) noexcept {
    try {
        throw;
    } catch (const py::error_already_set& e) {
        try {
            GilHold gil;
            return python_exception(e, where);
        } catch (...) {
            return std::current_exception();
        }
    } catch (...) {
        return std::current_exception();
    }
}

/// GIL held, a Python error set (a C API call failed): that error, as capture_exception
/// makes it.
inline std::exception_ptr capture_python_error(const std::string& where) noexcept {
    try {
        throw py::error_already_set();
    } catch (...) {
        return capture_exception(where);
    }
}

}  // namespace pyscheduler::detail
