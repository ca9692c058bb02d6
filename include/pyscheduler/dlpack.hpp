// pyscheduler/dlpack.hpp - zero-copy tensors between C++ and Python through DLPack.
//
//   auto t = pyscheduler::Tensor::from_vector(std::move(pixels), {480, 640, 3});
//   pybind11::object o = pybind11::cast(std::move(t));   // numpy.from_dlpack(o): no copy
//   auto back = pyscheduler::Tensor::from_python(numpy_array); // no copy either
//
// A commit function may return a Tensor: it is built on the commit thread without the
// GIL and turned into a Python object inside the executor's GIL hold.
//
// Ownership rules:
// - A Tensor owns one DLManagedTensor and calls its deleter exactly once: when the
//   Tensor is destroyed, or - after it was handed to Python - when the consumer is
//   done with the memory (DLPack's contract), or when the unconsumed Python object dies.
// - An imported Tensor keeps the producer's memory alive (numpy array, torch tensor...)
//   until it is destroyed, even after Python dropped every reference. Its deleter needs
//   the GIL, which the destructor takes itself: destroy it on any thread.
// - The Python object made from a Tensor is single-use, as the protocol requires: the
//   first __dlpack__ call hands the memory over; a second raises BufferError.
//
// Only the legacy DLManagedTensor is exchanged: the installed DLPack headers (Debian's
// 0.6) have no versioned struct. Producers that speak DLPack 1.x (numpy 2, torch)
// still export the legacy struct when the consumer does not ask for a version.
// A consequence with numpy >= 2: an array it imports through legacy DLPack is
// read-only (legacy DLPack cannot say "writable"), and numpy refuses to export a
// read-only array through legacy DLPack. from_python imports such CPU arrays through
// the buffer protocol instead, still without a copy; Python code that wants to write
// results should write them into arrays of its own.
#pragma once

#include <Python.h>
#include <dlpack/dlpack.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "pyscheduler/detail/config.hpp"
#include "pyscheduler/detail/gil.hpp"
#include "pyscheduler/detail/interpreter.hpp"

#if defined(__STDCPP_FLOAT16_T__) || defined(__STDCPP_BFLOAT16_T__)
#include <stdfloat>
#endif

namespace pyscheduler {

// --- dtypes ------------------------------------------------------------------------

/// DLPack's type code for bool. DLPack 0.8 named it kDLBool (numpy and torch use it);
/// the 0.6 headers Debian ships predate the name, not the value.
inline constexpr std::uint8_t kDLBoolCode = 6;

/// dlpack_dtype<T>::value is the DLDataType of a C++ element type T.
template <class T>
struct dlpack_dtype;

template <class T>
    requires(std::is_integral_v<T> && !std::is_same_v<T, bool>)
struct dlpack_dtype<T> {
    static constexpr DLDataType value{static_cast<std::uint8_t>(std::is_signed_v<T> ? kDLInt : kDLUInt),
                                      static_cast<std::uint8_t>(8 * sizeof(T)), 1};
};
template <>
struct dlpack_dtype<bool> {
    static constexpr DLDataType value{kDLBoolCode, 8, 1};
};
template <>
struct dlpack_dtype<float> {
    static constexpr DLDataType value{kDLFloat, 32, 1};
};
template <>
struct dlpack_dtype<double> {
    static constexpr DLDataType value{kDLFloat, 64, 1};
};
#if defined(__FLT16_MANT_DIG__)
template <>
struct dlpack_dtype<_Float16> {  // GCC and Clang on x86-64 and AArch64
    static constexpr DLDataType value{kDLFloat, 16, 1};
};
#endif
#if defined(__STDCPP_FLOAT16_T__) && !defined(__FLT16_MANT_DIG__)
template <>
struct dlpack_dtype<std::float16_t> {
    static constexpr DLDataType value{kDLFloat, 16, 1};
};
#endif
#if defined(__STDCPP_BFLOAT16_T__)
template <>
struct dlpack_dtype<std::bfloat16_t> {
    static constexpr DLDataType value{kDLBfloat, 16, 1};
};
#endif

template <class T>
inline constexpr DLDataType dtype_of = dlpack_dtype<std::remove_cv_t<T>>::value;

inline bool operator==(const DLDataType& a, const DLDataType& b) noexcept {
    return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}
inline bool operator==(const DLDevice& a, const DLDevice& b) noexcept {
    return a.device_type == b.device_type && a.device_id == b.device_id;
}

/// "float32", "int8", "bool", "bfloat16", "complex64", ...
inline std::string to_string(const DLDataType& t) {
    std::string s;
    switch (t.code) {
        case kDLInt: s = "int"; break;
        case kDLUInt: s = "uint"; break;
        case kDLFloat: s = "float"; break;
        case kDLBfloat: s = "bfloat"; break;
        case kDLComplex: s = "complex"; break;
        case kDLBoolCode: s = "bool"; break;
        default: s = "code" + std::to_string(t.code) + "_"; break;
    }
    if (t.code != kDLBoolCode || t.bits != 8) s += std::to_string(t.bits);
    if (t.lanes != 1) s += "x" + std::to_string(t.lanes);
    return s;
}

/// "cpu", "cuda:0", "cuda_host", "cuda_managed:1", or "device_type N:id".
inline std::string to_string(const DLDevice& d) {
    switch (d.device_type) {
        case kDLCPU: return "cpu";
        case kDLCUDA: return "cuda:" + std::to_string(d.device_id);
        case kDLCUDAHost: return "cuda_host";
        case kDLCUDAManaged: return "cuda_managed:" + std::to_string(d.device_id);
        default: return "device_type " + std::to_string(static_cast<int>(d.device_type)) + ":" +
                        std::to_string(d.device_id);
    }
}

namespace detail {

/// Number of elements `shape` holds; std::invalid_argument, naming `origin`, for a
/// negative extent.
inline std::int64_t element_count(std::span<const std::int64_t> shape, const std::string& origin) {
    std::int64_t count = 1;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] < 0) {
            throw std::invalid_argument(origin + ": negative extent " + std::to_string(shape[i]) + " in dimension " +
                                        std::to_string(i));
        }
        count *= shape[i];
    }
    return count;
}

/// Throws std::invalid_argument, naming `origin`, unless pyscheduler can hold `t`:
/// a sane shape, one lane of a numeric or bool type, memory on the CPU or a CUDA device.
inline void validate_dl_tensor(const DLTensor& t, const std::string& origin) {
    auto fail = [&](const std::string& why) { throw std::invalid_argument(origin + ": " + why); };
    if (t.ndim < 0) fail("negative ndim " + std::to_string(t.ndim));
    if (t.ndim > 0 && t.shape == nullptr) fail("the tensor has " + std::to_string(t.ndim) + " dimensions but no shape");
    if (t.ndim > 0) element_count(std::span<const std::int64_t>(t.shape, static_cast<std::size_t>(t.ndim)), origin);
    const DLDataType d = t.dtype;
    if (d.lanes != 1) fail("unsupported dtype " + to_string(d) + ": vector types (lanes > 1) are not supported");
    const bool bits_ok = [&] {
        switch (d.code) {
            case kDLInt:
            case kDLUInt: return d.bits == 8 || d.bits == 16 || d.bits == 32 || d.bits == 64;
            case kDLFloat: return d.bits == 16 || d.bits == 32 || d.bits == 64;
            case kDLBfloat: return d.bits == 16;
            case kDLComplex: return d.bits == 64 || d.bits == 128;
            case kDLBoolCode: return d.bits == 8;
            default: return false;
        }
    }();
    if (!bits_ok) fail("unsupported dtype " + to_string(d));
    switch (t.device.device_type) {
        case kDLCPU:
        case kDLCUDA:
        case kDLCUDAHost:
        case kDLCUDAManaged: break;
        default: fail("unsupported device " + to_string(t.device) + " (supported: cpu, cuda, cuda_host, cuda_managed)");
    }
}

/// Bytes of one element of `t`.
inline std::size_t itemsize_of(const DLDataType& t) noexcept {
    return (static_cast<std::size_t>(t.bits) * t.lanes + 7) / 8;
}

/// Row-major (C) strides, in elements, of a compact tensor of `shape`.
inline std::vector<std::int64_t> compact_strides(std::span<const std::int64_t> shape) {
    std::vector<std::int64_t> strides(shape.size());
    std::int64_t step = 1;
    for (std::size_t i = shape.size(); i-- > 0;) {
        strides[i] = step;
        step *= shape[i];
    }
    return strides;
}

}  // namespace detail

// --- Tensor --------------------------------------------------------------------------

/// A move-only owner of one DLPack tensor (see the ownership rules at the top).
class Tensor {
public:
    /// Orders a device producer's pending work on `producer_stream` before the work a
    /// consumer will queue on `consumer_stream` (a DLPack stream code: 1 is CUDA's
    /// legacy default stream, 2 the per-thread default stream, others a cudaStream_t).
    /// Set by device producers (see pyscheduler/cuda.hpp); called by __dlpack__.
    using StreamOrderFn = void (*)(std::intptr_t producer_stream, std::intptr_t consumer_stream, int device);

    Tensor() noexcept = default;
    Tensor(Tensor&& other) noexcept
        : managed_(std::exchange(other.managed_, nullptr)),
          deleter_needs_gil_(other.deleter_needs_gil_),
          compact_strides_(std::move(other.compact_strides_)),
          producer_stream_(other.producer_stream_),
          order_(std::exchange(other.order_, nullptr)) {}
    Tensor& operator=(Tensor&& other) noexcept {
        if (this != &other) {
            reset();
            managed_ = std::exchange(other.managed_, nullptr);
            deleter_needs_gil_ = other.deleter_needs_gil_;
            compact_strides_ = std::move(other.compact_strides_);
            producer_stream_ = other.producer_stream_;
            order_ = std::exchange(other.order_, nullptr);
        }
        return *this;
    }
    Tensor(const Tensor&) = delete;
    Tensor& operator=(const Tensor&) = delete;
    ~Tensor() { reset(); }

    /// Takes ownership of `managed` (its deleter will run exactly once). Set
    /// `deleter_needs_gil` when the deleter touches Python objects. Throws
    /// std::invalid_argument (leaving ownership with the caller) when the tensor has an
    /// unsupported dtype or device, or a malformed shape.
    static Tensor adopt(DLManagedTensor* managed, bool deleter_needs_gil = false) {
        if (managed == nullptr) throw std::invalid_argument("pyscheduler::Tensor::adopt: null DLManagedTensor");
        detail::validate_dl_tensor(managed->dl_tensor, "pyscheduler::Tensor::adopt");
        Tensor t;
        t.managed_ = managed;
        t.deleter_needs_gil_ = deleter_needs_gil;
        t.fill_compact_strides();
        return t;
    }

    /// A CPU tensor that takes over `data`'s buffer (no copy), of dtype dtype_of<T>.
    /// `shape`'s extents must multiply to data.size().
    template <class T>
    static Tensor from_vector(std::vector<T>&& data, std::vector<std::int64_t> shape) {
        static_assert(!std::is_same_v<T, bool>,
                      "std::vector<bool> is bit-packed and has no buffer to hand over: fill a "
                      "std::vector<std::uint8_t> with 0/1 and call from_vector(data, shape, dtype_of<bool>)");
        return from_vector(std::move(data), std::move(shape), dtype_of<T>);
    }

    /// As above, with the elements read as `dtype`, which must have the size of T
    /// (e.g. std::uint8_t bytes as bool, std::uint16_t bit patterns as float16).
    template <class T>
    static Tensor from_vector(std::vector<T>&& data, std::vector<std::int64_t> shape, DLDataType dtype) {
        static_assert(std::is_trivially_copyable_v<T>, "pyscheduler::Tensor::from_vector: T must be a plain number type");
        const std::string origin = "pyscheduler::Tensor::from_vector";
        if (dtype.lanes != 1 || dtype.bits % 8 != 0 || dtype.bits / 8 != sizeof(T)) {
            throw std::invalid_argument(origin + ": dtype " + to_string(dtype) + " does not have the size of the element type (" +
                                        std::to_string(sizeof(T)) + " bytes)");
        }
        const std::int64_t count = detail::element_count(shape, origin);
        if (static_cast<std::uint64_t>(count) != data.size()) {
            throw std::invalid_argument(origin + ": the shape holds " + std::to_string(count) + " elements but the vector has " +
                                        std::to_string(data.size()));
        }
        auto* holder = new VectorHolder<T>{{}, std::move(data), std::move(shape), {}};
        holder->strides = detail::compact_strides(holder->shape);
        DLManagedTensor& m = holder->managed;
        m.dl_tensor.data = holder->data.data();
        m.dl_tensor.device = DLDevice{kDLCPU, 0};
        m.dl_tensor.ndim = static_cast<std::int32_t>(holder->shape.size());
        m.dl_tensor.dtype = dtype;
        m.dl_tensor.shape = holder->shape.data();
        m.dl_tensor.strides = holder->strides.data();
        m.dl_tensor.byte_offset = 0;
        m.manager_ctx = holder;
        m.deleter = [](DLManagedTensor* self) { delete static_cast<VectorHolder<T>*>(self->manager_ctx); };
        try {
            detail::validate_dl_tensor(m.dl_tensor, origin);
        } catch (...) {
            m.deleter(&m);
            throw;
        }
        Tensor t;
        t.managed_ = &m;
        return t;
    }

    /// Imports any object with __dlpack__ (numpy arrays, torch tensors, cupy arrays...),
    /// or a legacy "dltensor" capsule, without a copy (read-only CPU arrays that refuse
    /// DLPack export come through the buffer protocol). The calling thread must hold the
    /// GIL (callbacks do). For CUDA producers, `stream` is the DLPack stream code of the
    /// stream the C++ side will use (default: the legacy default stream); the producer
    /// orders its pending work before it. Throws std::invalid_argument when `obj` is
    /// not a DLPack producer, its capsule was consumed already, or its dtype or device
    /// is unsupported; std::logic_error without the GIL.
    static Tensor from_python(pybind11::handle obj, std::optional<std::intptr_t> stream = std::nullopt);

    /// Whether `obj` offers DLPack (has __dlpack__, or is a capsule). GIL required.
    static bool is_dlpack_producer(pybind11::handle obj) {
        return obj && (PyCapsule_CheckExact(obj.ptr()) || pybind11::hasattr(obj, "__dlpack__"));
    }

    /// False for a default-constructed or moved-from Tensor.
    explicit operator bool() const noexcept { return managed_ != nullptr; }

    /// Address of the first element (the producer's data pointer plus byte_offset).
    void* data() const noexcept {
        return managed_ ? static_cast<char*>(tensor().data) + tensor().byte_offset : nullptr;
    }
    /// data() as T*; std::invalid_argument unless the dtype is dtype_of<T>.
    template <class T>
    T* data_as() const {
        if (!(dtype() == dtype_of<T>)) {
            throw std::invalid_argument("pyscheduler::Tensor::data_as: the tensor holds " + to_string(dtype()) + ", not " +
                                        to_string(dtype_of<T>));
        }
        return static_cast<T*>(data());
    }
    std::span<const std::int64_t> shape() const noexcept {
        return managed_ ? std::span<const std::int64_t>(tensor().shape, static_cast<std::size_t>(ndim()))
                        : std::span<const std::int64_t>();
    }
    /// Strides in elements (not bytes); compact row-major strides when the producer
    /// gave none.
    std::span<const std::int64_t> strides() const noexcept {
        if (!managed_) return {};
        const std::int64_t* s = tensor().strides ? tensor().strides : compact_strides_.data();
        return {s, static_cast<std::size_t>(ndim())};
    }
    int ndim() const noexcept { return managed_ ? tensor().ndim : 0; }
    DLDataType dtype() const noexcept { return managed_ ? tensor().dtype : DLDataType{0, 0, 0}; }
    DLDevice device() const noexcept { return managed_ ? tensor().device : DLDevice{kDLCPU, 0}; }
    /// Number of elements (1 for a 0-d tensor, 0 for an empty Tensor).
    std::int64_t numel() const noexcept {
        if (!managed_) return 0;
        std::int64_t n = 1;
        for (std::int64_t e : shape()) n *= e;
        return n;
    }
    /// Bytes of one element.
    std::size_t itemsize() const noexcept { return detail::itemsize_of(dtype()); }
    /// numel() * itemsize(): the bytes the elements take when packed.
    std::size_t byte_size() const noexcept { return static_cast<std::size_t>(numel()) * itemsize(); }
    /// Row-major (C) contiguous: strides equal compact strides, ignoring extents of 1.
    bool is_contiguous() const noexcept {
        std::int64_t expected = 1;
        for (int i = ndim() - 1; i >= 0; --i) {
            if (shape()[i] == 1) continue;
            if (strides()[i] != expected) return numel() == 0;
            expected *= shape()[i];
        }
        return true;
    }

    /// The DLManagedTensor, still owned by this Tensor (nullptr when empty).
    const DLManagedTensor* get() const noexcept { return managed_; }
    /// Gives up ownership: the caller must call the returned tensor's deleter once.
    DLManagedTensor* release() noexcept {
        order_ = nullptr;
        compact_strides_.clear();
        return std::exchange(managed_, nullptr);
    }

    /// Records that work producing this tensor's contents may still be pending on
    /// `stream` of its device; `order` makes a consumer's stream wait for it.
    void set_producer_stream(std::intptr_t stream, StreamOrderFn order) noexcept {
        producer_stream_ = stream;
        order_ = order;
    }
    std::intptr_t producer_stream() const noexcept { return producer_stream_; }

    /// Orders pending producer work before `consumer_stream` (a DLPack stream code);
    /// no-op when there is nothing to order. Used by __dlpack__.
    void order_before(std::intptr_t consumer_stream) const {
        if (order_ != nullptr && managed_ != nullptr) order_(producer_stream_, consumer_stream, device().device_id);
    }

    /// Runs the deleter now (taking the GIL if it needs it) and empties the Tensor.
    void reset() noexcept {
        DLManagedTensor* m = std::exchange(managed_, nullptr);
        order_ = nullptr;
        compact_strides_.clear();
        if (m == nullptr || m->deleter == nullptr) return;
        if (deleter_needs_gil_) {
            // After Py_Finalize the producer's memory went with the interpreter.
            if (Py_IsInitialized() == 0) return;
            detail::GilHold gil;
            m->deleter(m);
        } else {
            m->deleter(m);
        }
    }

private:
    template <class T>
    struct VectorHolder {
        DLManagedTensor managed;
        std::vector<T> data;
        std::vector<std::int64_t> shape;
        std::vector<std::int64_t> strides;
    };

    void fill_compact_strides() {
        if (tensor().strides == nullptr && ndim() > 0) compact_strides_ = detail::compact_strides(shape());
    }
    const DLTensor& tensor() const noexcept { return managed_->dl_tensor; }

    DLManagedTensor* managed_ = nullptr;
    bool deleter_needs_gil_ = false;
    std::vector<std::int64_t> compact_strides_;  // only when the producer gave no strides
    std::intptr_t producer_stream_ = 0;
    StreamOrderFn order_ = nullptr;
};

// --- the Python side -----------------------------------------------------------------

namespace detail {

inline constexpr const char* kTensorTypeKey = "pyscheduler.dlpack.Tensor.v1";

/// The Python object a Tensor becomes: single-use DLPack producer.
struct PyTensorObject {
    PyObject_HEAD
    Tensor tensor;
    DLDevice device;  // kept after export: __dlpack_device__ must still answer
};

inline void dltensor_capsule_destructor(PyObject* capsule) noexcept {
    if (PyCapsule_IsValid(capsule, "dltensor") == 0) return;  // consumed: the consumer owns it
    // A destructor may run while an exception is set; the deleter must not see it.
#if PY_VERSION_HEX >= 0x030C0000
    PyObject* pending = PyErr_GetRaisedException();
#else
    PyObject *type = nullptr, *value = nullptr, *trace = nullptr;
    PyErr_Fetch(&type, &value, &trace);
#endif
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (m != nullptr && m->deleter != nullptr) m->deleter(m);
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(pending);
#else
    PyErr_Restore(type, value, trace);
#endif
}

inline void py_tensor_dealloc(PyObject* self) noexcept {
    PyTypeObject* type = Py_TYPE(self);
    reinterpret_cast<PyTensorObject*>(self)->tensor.~Tensor();
    type->tp_free(self);
    Py_DECREF(type);
}

inline PyObject* py_tensor_dlpack(PyObject* self, PyObject* args, PyObject* kwargs) noexcept {
    static const char* keywords[] = {"stream", "max_version", "dl_device", "copy", nullptr};
    PyObject* stream = Py_None;
    PyObject* max_version = Py_None;
    PyObject* dl_device = Py_None;
    PyObject* copy = Py_None;
    if (PyArg_ParseTupleAndKeywords(args, kwargs, "|O$OOO:__dlpack__", const_cast<char**>(keywords), &stream,
                                    &max_version, &dl_device, &copy) == 0) {
        return nullptr;
    }
    auto* obj = reinterpret_cast<PyTensorObject*>(self);
    if (!obj->tensor) {
        PyErr_SetString(PyExc_BufferError,
                        "pyscheduler.Tensor: __dlpack__ was called already (a DLPack export is single-use)");
        return nullptr;
    }
    if (copy == Py_True) {
        PyErr_SetString(PyExc_BufferError, "pyscheduler.Tensor: cannot export a copy (copy=True); only zero-copy export");
        return nullptr;
    }
    if (dl_device != Py_None) {
        int type = 0;
        int id = 0;
        if (PyArg_ParseTuple(dl_device, "ii:__dlpack__ dl_device", &type, &id) == 0) return nullptr;
        if (!(DLDevice{static_cast<DLDeviceType>(type), id} == obj->device)) {
            PyErr_Format(PyExc_BufferError, "pyscheduler.Tensor: the tensor is on %s and cannot be exported to another device",
                         to_string(obj->device).c_str());
            return nullptr;
        }
    }
    const DLDeviceType device_type = obj->device.device_type;
    if (device_type == kDLCUDA || device_type == kDLCUDAManaged) {
        std::intptr_t consumer = 1;  // None: the legacy default stream
        if (stream != Py_None) {
            consumer = static_cast<std::intptr_t>(PyLong_AsSsize_t(stream));
            if (consumer == -1 && PyErr_Occurred() != nullptr) return nullptr;
            if (consumer == 0) {
                PyErr_SetString(PyExc_ValueError, "pyscheduler.Tensor.__dlpack__: stream 0 is ambiguous; use 1 for the legacy "
                                                  "default stream or 2 for the per-thread default stream");
                return nullptr;
            }
        }
        if (consumer != -1) {
            try {
                obj->tensor.order_before(consumer);
            } catch (const std::exception& e) {
                PyErr_Format(PyExc_RuntimeError, "pyscheduler.Tensor.__dlpack__: cannot order the producer's stream before "
                                                 "the consumer's: %s", e.what());
                return nullptr;
            }
        }
    }
    DLManagedTensor* managed = obj->tensor.release();
    PyObject* capsule = PyCapsule_New(managed, "dltensor", &dltensor_capsule_destructor);
    if (capsule == nullptr) managed->deleter(managed);
    return capsule;
}

inline PyObject* py_tensor_dlpack_device(PyObject* self, PyObject* /*unused*/) noexcept {
    const DLDevice d = reinterpret_cast<PyTensorObject*>(self)->device;
    return Py_BuildValue("(ii)", static_cast<int>(d.device_type), static_cast<int>(d.device_id));
}

inline PyObject* py_tensor_repr(PyObject* self) noexcept {
    auto* obj = reinterpret_cast<PyTensorObject*>(self);
    if (!obj->tensor) return PyUnicode_FromFormat("<pyscheduler.Tensor (exported) on %s>", to_string(obj->device).c_str());
    std::string shape;
    for (std::int64_t e : obj->tensor.shape()) shape += (shape.empty() ? "" : ", ") + std::to_string(e);
    return PyUnicode_FromFormat("<pyscheduler.Tensor %s [%s] on %s>", to_string(obj->tensor.dtype()).c_str(),
                                shape.c_str(), to_string(obj->device).c_str());
}

/// The Python type, created once per interpreter and kept in the interpreter's state
/// dict (so plugins share it, and each sub-interpreter has its own). GIL required.
inline PyTypeObject* py_tensor_type() {
    static PyMethodDef methods[] = {
        {"__dlpack__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&py_tensor_dlpack)),
         METH_VARARGS | METH_KEYWORDS,
         "__dlpack__(stream=None, *, max_version=None, dl_device=None, copy=None): the DLPack capsule (once)."},
        {"__dlpack_device__", &py_tensor_dlpack_device, METH_NOARGS, "(device_type, device_id) of the tensor."},
        {nullptr, nullptr, 0, nullptr}};
    static PyType_Slot slots[] = {{Py_tp_dealloc, reinterpret_cast<void*>(&py_tensor_dealloc)},
                                  {Py_tp_repr, reinterpret_cast<void*>(&py_tensor_repr)},
                                  {Py_tp_methods, methods},
                                  {Py_tp_doc, const_cast<char*>("A C++ tensor offered to Python through DLPack "
                                                                "(numpy/torch/cupy .from_dlpack import it once).")},
                                  {0, nullptr}};
    static PyType_Spec spec = {"pyscheduler.Tensor", static_cast<int>(sizeof(PyTensorObject)), 0,
                               Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, slots};

    struct Cache {
        std::int64_t interpreter_id = -1;
        PyObject* type = nullptr;
    };
    thread_local Cache cache;  // interpreter ids are never reused
    PyInterpreterState* interp = PyInterpreterState_Get();
    const std::int64_t id = PyInterpreterState_GetID(interp);
    if (cache.interpreter_id == id) return reinterpret_cast<PyTypeObject*>(cache.type);

    PyObject* dict = PyInterpreterState_GetDict(interp);  // borrowed
    if (dict == nullptr) throw std::runtime_error("pyscheduler: the interpreter has no state dict");
    PyObject* type = PyDict_GetItemString(dict, kTensorTypeKey);  // borrowed
    if (type == nullptr) {
        type = PyType_FromSpec(&spec);
        if (type == nullptr) throw pybind11::error_already_set();
        const int rc = PyDict_SetItemString(dict, kTensorTypeKey, type);
        Py_DECREF(type);  // the dict keeps it for the interpreter's life
        if (rc != 0) throw pybind11::error_already_set();
    }
    cache = {id, type};
    return reinterpret_cast<PyTypeObject*>(type);
}

/// Wraps `t` into a new pyscheduler.Tensor Python object. GIL required.
inline pybind11::object tensor_to_python(Tensor&& t) {
    if (!t) throw std::invalid_argument("pyscheduler::Tensor: cannot convert an empty (moved-from) Tensor to Python");
    PyTypeObject* type = py_tensor_type();
    PyObject* self = type->tp_alloc(type, 0);
    if (self == nullptr) throw pybind11::error_already_set();
    auto* obj = reinterpret_cast<PyTensorObject*>(self);
    obj->device = t.device();
    ::new (&obj->tensor) Tensor(std::move(t));
    return pybind11::reinterpret_steal<pybind11::object>(self);
}

/// Takes the DLManagedTensor out of a "dltensor" capsule (renaming it "used_dltensor",
/// as the protocol requires). The capsule is left untouched when it is refused.
inline Tensor consume_dltensor_capsule(PyObject* capsule, const std::string& origin) {
    const char* name = PyCapsule_GetName(capsule);
    if (name == nullptr) throw pybind11::error_already_set();
    if (std::strcmp(name, "used_dltensor") == 0) {
        throw std::invalid_argument(origin + ": the DLPack capsule was consumed already (a capsule can be imported once)");
    }
    if (std::strcmp(name, "dltensor") != 0) {
        throw std::invalid_argument(origin + ": a capsule named \"" + name +
                                    "\" is not a DLPack \"dltensor\" capsule (versioned DLPack 1.x capsules need "
                                    "DLPack 1.x headers)");
    }
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (managed == nullptr) throw pybind11::error_already_set();
    Tensor t = Tensor::adopt(managed, /*deleter_needs_gil=*/true);  // throws before we own it
    if (PyCapsule_SetName(capsule, "used_dltensor") != 0) {
        t.release();  // the capsule still owns it
        throw pybind11::error_already_set();
    }
    return t;
}

/// DLPack dtype of a buffer-protocol format string ("<f", "d", "=q", "Zd"...), native
/// or little-endian byte order only.
inline std::optional<DLDataType> dtype_of_buffer_format(std::string_view format, Py_ssize_t itemsize) {
    if (!format.empty() && (format[0] == '@' || format[0] == '=' || format[0] == '<')) format.remove_prefix(1);
    const auto bits = static_cast<std::uint8_t>(8 * itemsize);
    std::uint8_t code = 0;
    if (format == "?") {
        code = kDLBoolCode;
    } else if (format.size() == 1 && std::string_view("bhilq").find(format[0]) != std::string_view::npos) {
        code = kDLInt;
    } else if (format.size() == 1 && std::string_view("BHILQ").find(format[0]) != std::string_view::npos) {
        code = kDLUInt;
    } else if (format == "e" || format == "f" || format == "d") {
        code = kDLFloat;
    } else if (format == "Zf" || format == "Zd") {
        code = kDLComplex;
    } else {
        return std::nullopt;
    }
    return DLDataType{code, bits, 1};
}

/// A CPU Tensor viewing `obj`'s buffer (PEP 3118), read-only buffers included; the
/// buffer is released, with the GIL, by the deleter.
inline Tensor import_buffer(pybind11::handle obj, const std::string& origin) {
    struct Holder {
        DLManagedTensor managed{};
        Py_buffer view{};
        std::vector<std::int64_t> shape;
        std::vector<std::int64_t> strides;
    };
    auto holder = std::make_unique<Holder>();
    if (PyObject_GetBuffer(obj.ptr(), &holder->view, PyBUF_RECORDS_RO) != 0) {
        const pybind11::error_already_set e;
        throw std::invalid_argument(origin + ": " + to_python_error(e, "getting the buffer").what());
    }
    const Py_buffer& v = holder->view;
    auto release = [&] { PyBuffer_Release(&holder->view); };
    const auto dtype = dtype_of_buffer_format(v.format ? v.format : "B", v.itemsize);
    if (!dtype) {
        release();
        throw std::invalid_argument(origin + ": unsupported buffer format \"" + std::string(v.format) + "\"");
    }
    for (int i = 0; i < v.ndim; ++i) {
        holder->shape.push_back(v.shape[i]);
        if (v.strides[i] % v.itemsize != 0) {
            release();
            throw std::invalid_argument(origin + ": a stride of " + std::to_string(v.strides[i]) +
                                        " bytes is not a whole number of elements");
        }
        holder->strides.push_back(v.strides[i] / v.itemsize);
    }
    DLManagedTensor& m = holder->managed;
    m.dl_tensor = DLTensor{v.buf, DLDevice{kDLCPU, 0}, v.ndim, *dtype, holder->shape.data(), holder->strides.data(), 0};
    m.manager_ctx = holder.get();
    m.deleter = [](DLManagedTensor* self) {
        auto* h = static_cast<Holder*>(self->manager_ctx);
        GilHold gil;  // whoever ends up owning it may not hold the GIL
        PyBuffer_Release(&h->view);
        delete h;
    };
    try {
        Tensor t = Tensor::adopt(&m, /*deleter_needs_gil=*/true);
        holder.release();
        return t;
    } catch (...) {
        release();
        throw;
    }
}

}  // namespace detail

inline Tensor Tensor::from_python(pybind11::handle obj, std::optional<std::intptr_t> stream) {
    namespace py = pybind11;
    const std::string origin = "pyscheduler::Tensor::from_python";
    if (!detail::this_thread_holds_gil()) throw std::logic_error(origin + ": the calling thread must hold the GIL");
    if (!obj) throw std::invalid_argument(origin + ": null object");
    if (PyCapsule_CheckExact(obj.ptr())) return detail::consume_dltensor_capsule(obj.ptr(), origin);

    const std::string type_name = Py_TYPE(obj.ptr())->tp_name;
    const py::object method = py::getattr(obj, "__dlpack__", py::none());
    if (method.is_none()) {
        throw std::invalid_argument(origin + ": a " + type_name +
                                    " object has no __dlpack__ method, so it is not a DLPack tensor (numpy arrays, torch "
                                    "tensors and cupy arrays are)");
    }
    py::object capsule;
    try {
        capsule = stream ? method(py::arg("stream") = *stream) : method();
    } catch (const py::error_already_set& e) {
        // numpy >= 2 marks arrays it imported through legacy DLPack read-only and
        // refuses to export read-only arrays that way (BufferError): such CPU arrays
        // still come in without a copy through the buffer protocol.
        const std::string why = origin + ": " + detail::to_python_error(e, type_name + ".__dlpack__()").what();
        if (e.matches(PyExc_BufferError) && PyObject_CheckBuffer(obj.ptr()) != 0) {
            try {
                return detail::import_buffer(obj, origin);
            } catch (const std::invalid_argument&) {  // not a buffer of numbers either: DLPack's reason is the clearer
                PyErr_Clear();
            }
        }
        throw std::invalid_argument(why);
    }
    if (!PyCapsule_CheckExact(capsule.ptr())) {
        throw std::invalid_argument(origin + ": " + type_name + ".__dlpack__() returned a " +
                                    Py_TYPE(capsule.ptr())->tp_name + ", not a capsule");
    }
    return detail::consume_dltensor_capsule(capsule.ptr(), origin + " (" + type_name + ")");
}

}  // namespace pyscheduler

// --- pybind11 integration ----------------------------------------------------------

namespace pybind11::detail {

/// pybind11::cast(Tensor&&) gives a pyscheduler.Tensor (a single-use DLPack
/// producer); obj.cast<Tensor>() imports any DLPack producer without a copy.
template <>
struct type_caster<pyscheduler::Tensor> {
    PYBIND11_TYPE_CASTER(pyscheduler::Tensor, const_name("pyscheduler.Tensor"));

    bool load(handle src, bool /*convert*/) {
        if (!pyscheduler::Tensor::is_dlpack_producer(src)) return false;
        value = pyscheduler::Tensor::from_python(src);
        return true;
    }
    static handle cast(pyscheduler::Tensor&& src, return_value_policy /*policy*/, handle /*parent*/) {
        return pyscheduler::detail::tensor_to_python(std::move(src)).release();
    }
};

}  // namespace pybind11::detail
