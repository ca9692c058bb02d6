// pyscheduler/gil_safe.hpp - Python objects that must not leave the GIL, and a
// holder that may.
//
// A pybind11 object increments and decrements a reference count when it is copied and
// destroyed, which is only safe with the GIL held. pyscheduler hands results to threads
// that do not hold it (a future's get(), invoke's caller), so it refuses, at compile
// time, every result type that owns Python references (owns_python_references_v).
// What to do instead: convert inside the callback (`r.cast<double>()`), or wrap the
// object in GilSafe<T>, whose copy and destructor take the GIL themselves.
#pragma once

#include <pybind11/pybind11.h>

#include <array>
#include <cstddef>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "pyscheduler/detail/gil.hpp"

namespace pyscheduler {

template <class T>
class GilSafe;

/// Whether copying or destroying a T touches Python reference counts: T is a pybind11
/// handle or object (py::object, py::list, py::array ...), or a class template
/// instantiated with such a type (std::vector<py::object>, std::optional<py::dict>,
/// std::pair<int, py::str>, std::map<std::string, py::object> ...), or a std::array of
/// them. A struct of your own that holds Python objects cannot be seen through:
/// specialize this trait for it (`struct owns_python_references<Mine> : std::true_type {}`)
/// so that pyscheduler refuses it too. GilSafe<T> owns one, but safely: false.
template <class T>
struct owns_python_references : std::bool_constant<std::is_base_of_v<pybind11::handle, T>> {};

template <template <class...> class Template, class... Args>
struct owns_python_references<Template<Args...>>
    : std::bool_constant<(owns_python_references<std::remove_cv_t<Args>>::value || ...)> {};

template <class T, std::size_t N>
struct owns_python_references<std::array<T, N>> : owns_python_references<std::remove_cv_t<T>> {};

template <class T>
struct owns_python_references<GilSafe<T>> : std::false_type {};

template <class T>
inline constexpr bool owns_python_references_v = owns_python_references<std::remove_cvref_t<T>>::value;

/// A Python object of the main interpreter that may be moved to, kept on and destroyed
/// on any thread: its copy constructor and its destructor take the GIL themselves
/// (moves need no GIL). Return it from a callback when an object must outlive the
/// callback's GIL hold, e.g. to queue it to another handler or keep it in a cache:
///
///   auto f = h.queue_invoke(commit, [](pybind11::object r) { return pyscheduler::GilSafe(r); });
///   pyscheduler::GilSafe<pybind11::object> kept = f.get();   // any thread
///
/// Moving an object in needs no GIL; copying one in, and using get(), do (as for any
/// pybind11 object). Objects of own-GIL sub-interpreters are refused
/// (std::invalid_argument, when made on a thread of that interpreter): the holder takes
/// the main GIL, which does not protect them. For the same reason, do not copy or
/// destroy a GilSafe on an own-GIL handler's threads (its commit functions and
/// callbacks), which hold their own interpreter's GIL, not the main one.
template <class T = pybind11::object>
class GilSafe {
    static_assert(std::is_base_of_v<pybind11::object, T>, "pyscheduler::GilSafe<T>: T must be a pybind11 object type");

public:
    using object_type = T;

    GilSafe() noexcept = default;

    /// Takes `object` over.
    explicit GilSafe(T object) : object_(std::move(object)) {
        if (!object_ || !detail::this_thread_holds_gil()) return;  // moved in: no reference count touched
        if (PyInterpreterState_Get() != PyInterpreterState_Main()) {  // object_ dies under that interpreter's GIL
            throw std::invalid_argument(
                "pyscheduler::GilSafe holds objects of the main interpreter only, not of an own-GIL "
                "sub-interpreter: convert the object to a C++ value inside the handler's callback");
        }
    }

    GilSafe(const GilSafe& other) {
        if (other.object_) {
            detail::GilHold gil;
            object_ = other.object_;
        }
    }
    GilSafe(GilSafe&& other) noexcept : object_(std::exchange(other.object_, null())) {}
    /// Copy-and-swap: a copied-in value took the GIL to copy; the old one takes it to die.
    GilSafe& operator=(GilSafe other) noexcept {
        std::swap(object_, other.object_);
        return *this;
    }
    /// After Python was finalized (a GilSafe with static storage duration outlives the
    /// interpreter: see Interpreter lifetime in the README) the object went with it,
    /// and the reference is dropped without touching it.
    ~GilSafe() {
        if (!object_) return;
        if (Py_IsInitialized() == 0) {
            object_.release();
            return;
        }
        detail::GilHold gil;
        object_.release().dec_ref();
    }

    explicit operator bool() const noexcept { return static_cast<bool>(object_); }

    /// The object. Use it (copy it, call it, cast it) with the GIL held.
    const T& get() const& noexcept { return object_; }

    /// Takes the object out, leaving the holder empty. The caller must hold the GIL
    /// for as long as it keeps the object.
    T take() && noexcept { return std::exchange(object_, null()); }

private:
    static T null() noexcept { return pybind11::reinterpret_steal<T>(pybind11::handle()); }  // no allocation, no GIL
    T object_ = null();
};

template <class T>
GilSafe(T) -> GilSafe<T>;

}  // namespace pyscheduler
