// pyscheduler/cuda.hpp - Tensors in CUDA device memory (link pyscheduler::cuda).
//
//   // on a commit thread, with a stream of its own:
//   Tensor gpu = pyscheduler::cuda::to_device(host, /*device=*/0, upload_stream);
//   return gpu;  // Python: torch.from_dlpack(t) / cupy.from_dlpack(t), no copy
//
// Stream semantics (the DLPack protocol): a device tensor remembers the stream its
// contents are being produced on. When a consumer imports it and passes its own
// stream to __dlpack__ (torch and cupy pass their current stream), an event recorded
// on the producer's stream is made a dependency of the consumer's stream, so the
// upload is ordered before the consumer's kernels without blocking either thread.
//
// Every CUDA call is checked; failures throw cuda::Error with CUDA's error string.
// Device memory is freed by the tensor's deleter (whoever ends up owning it).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "pyscheduler/dlpack.hpp"

namespace pyscheduler::cuda {

/// A CUDA runtime call failed.
class Error : public std::runtime_error {
public:
    Error(const std::string& what, cudaError_t code)
        : std::runtime_error("pyscheduler::cuda: " + what + " failed: " + cudaGetErrorString(code) + " (" +
                             cudaGetErrorName(code) + ")"),
          code_(code) {}
    cudaError_t code() const noexcept { return code_; }

private:
    cudaError_t code_;
};

/// Throws cuda::Error unless `code` is cudaSuccess.
inline void check(cudaError_t code, const char* what) {
    if (code != cudaSuccess) throw Error(what, code);
}

/// Number of CUDA devices; 0 when there is none or no driver (never throws).
inline int device_count() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky "no device" error
        return 0;
    }
    return n;
}

namespace detail {

/// Makes `device` current for a scope, restoring the previous one.
class DeviceScope {
public:
    explicit DeviceScope(int device) {
        check(cudaGetDevice(&previous_), "cudaGetDevice");
        if (device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
    }
    ~DeviceScope() { (void)cudaSetDevice(previous_); }
    DeviceScope(const DeviceScope&) = delete;
    DeviceScope& operator=(const DeviceScope&) = delete;

private:
    int previous_ = 0;
};

inline cudaStream_t stream_from_dlpack(std::intptr_t code) noexcept {
    if (code == 1) return cudaStreamLegacy;
    if (code == 2) return cudaStreamPerThread;
    return reinterpret_cast<cudaStream_t>(code);
}

/// Tensor::StreamOrderFn for device tensors: the consumer's stream waits for an event
/// recorded on the producer's stream (nothing blocks the host).
inline void order_streams(std::intptr_t producer_stream, std::intptr_t consumer_stream, int device) {
    cudaStream_t producer = reinterpret_cast<cudaStream_t>(producer_stream);
    cudaStream_t consumer = stream_from_dlpack(consumer_stream);
    if (producer == nullptr) producer = cudaStreamLegacy;
    if (producer == consumer) return;  // one stream: already in order
    DeviceScope scope(device);
    cudaEvent_t event = nullptr;
    check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    cudaError_t rc = cudaEventRecord(event, producer);
    if (rc == cudaSuccess) rc = cudaStreamWaitEvent(consumer, event, 0);
    (void)cudaEventDestroy(event);  // released once the wait has been satisfied
    check(rc, "ordering the producer stream before the consumer stream (cudaEventRecord/cudaStreamWaitEvent)");
}

/// Device memory plus the shape and strides the DLManagedTensor points at.
struct DeviceBuffer {
    DLManagedTensor managed{};
    std::vector<std::int64_t> shape;
    std::vector<std::int64_t> strides;
    void* data = nullptr;
    int device = 0;

    static void deleter(DLManagedTensor* self) noexcept {
        auto* buffer = static_cast<DeviceBuffer*>(self->manager_ctx);
        if (buffer->data != nullptr) {
            int previous = 0;
            const bool switched = cudaGetDevice(&previous) == cudaSuccess && previous != buffer->device &&
                                  cudaSetDevice(buffer->device) == cudaSuccess;
            (void)cudaFree(buffer->data);
            if (switched) (void)cudaSetDevice(previous);
        }
        delete buffer;
    }
};

/// Allocates an uninitialized device tensor (compact strides) that records `stream`.
inline Tensor allocate(std::vector<std::int64_t> shape, DLDataType dtype, int device, cudaStream_t stream) {
    const std::size_t bytes =
        static_cast<std::size_t>(pyscheduler::detail::element_count(shape, "pyscheduler::cuda")) *
        pyscheduler::detail::itemsize_of(dtype);
    auto* buffer = new DeviceBuffer;
    buffer->shape = std::move(shape);
    buffer->strides = pyscheduler::detail::compact_strides(buffer->shape);
    buffer->device = device;
    DLManagedTensor& m = buffer->managed;
    m.manager_ctx = buffer;
    m.deleter = &DeviceBuffer::deleter;
    try {
        DeviceScope scope(device);
        if (bytes > 0) check(cudaMalloc(&buffer->data, bytes), "cudaMalloc");
    } catch (...) {
        DeviceBuffer::deleter(&m);
        throw;
    }
    m.dl_tensor = DLTensor{buffer->data,
                           DLDevice{kDLCUDA, device},
                           static_cast<std::int32_t>(buffer->shape.size()),
                           dtype,
                           buffer->shape.data(),
                           buffer->strides.data(),
                           0};
    Tensor t;
    try {
        t = Tensor::adopt(&m);
    } catch (...) {
        DeviceBuffer::deleter(&m);
        throw;
    }
    t.set_producer_stream(reinterpret_cast<std::intptr_t>(stream), &order_streams);
    return t;
}

/// Throws std::invalid_argument unless `source` is a non-empty, contiguous tensor on
/// a device of type `a` or `b` (described as `kind`), naming the copy `what`.
inline void require_contiguous_source(const Tensor& source, const char* what, const char* kind, DLDeviceType a,
                                      DLDeviceType b) {
    const std::string origin = std::string("pyscheduler::cuda::") + what;
    const DLDeviceType where = source.device().device_type;
    if (!source || (where != a && where != b)) {
        throw std::invalid_argument(origin + ": the source must be a " + kind + " tensor, not " +
                                    (source ? to_string(source.device()) : std::string("an empty Tensor")));
    }
    if (!source.is_contiguous()) throw std::invalid_argument(origin + ": the source must be contiguous (row-major)");
}

/// One element of N bytes: the host buffer of to_host, whatever the dtype.
template <std::size_t N>
struct alignas(N) Element {
    unsigned char bytes[N];
};

template <std::size_t N>
Tensor download(const Tensor& tensor, cudaStream_t stream) {
    std::vector<Element<N>> host(static_cast<std::size_t>(tensor.numel()));
    if (!host.empty()) {
        DeviceScope scope(tensor.device().device_id);
        check(cudaMemcpyAsync(host.data(), tensor.data(), tensor.byte_size(), cudaMemcpyDeviceToHost, stream),
              "cudaMemcpyAsync (device to host)");
        check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    }
    return Tensor::from_vector(std::move(host), std::vector<std::int64_t>(tensor.shape().begin(), tensor.shape().end()),
                               tensor.dtype());
}

}  // namespace detail

/// An uninitialized tensor of `shape` and dtype dtype_of<T> on `device`. Work that
/// fills it should go to `stream`, which the tensor records for its consumers.
template <class T>
Tensor empty(std::vector<std::int64_t> shape, int device = 0, cudaStream_t stream = nullptr) {
    return detail::allocate(std::move(shape), dtype_of<T>, device, stream);
}

/// Copies a contiguous CPU tensor to `device`, asynchronously on `stream`. The result
/// records `stream`, so consumers order their work after the copy. The host tensor
/// may be destroyed when this returns if its memory is pageable (ordinary memory: the
/// copy stages it before returning); pinned (cudaMallocHost) memory must stay alive
/// until the copy is done.
inline Tensor to_device(const Tensor& host, int device = 0, cudaStream_t stream = nullptr) {
    detail::require_contiguous_source(host, "to_device", "CPU", kDLCPU, kDLCUDAHost);
    Tensor out = detail::allocate(std::vector<std::int64_t>(host.shape().begin(), host.shape().end()), host.dtype(),
                                  device, stream);
    if (host.byte_size() > 0) {
        detail::DeviceScope scope(device);
        check(cudaMemcpyAsync(out.data(), host.data(), host.byte_size(), cudaMemcpyHostToDevice, stream),
              "cudaMemcpyAsync (host to device)");
    }
    return out;
}

/// Copies a contiguous CUDA tensor to a new CPU tensor and waits for the copy. Work
/// pending on `stream` (e.g. the kernels that produced `tensor`) comes first.
inline Tensor to_host(const Tensor& tensor, cudaStream_t stream = nullptr) {
    detail::require_contiguous_source(tensor, "to_host", "CUDA", kDLCUDA, kDLCUDAManaged);
    switch (tensor.itemsize()) {
        case 1: return detail::download<1>(tensor, stream);
        case 2: return detail::download<2>(tensor, stream);
        case 4: return detail::download<4>(tensor, stream);
        case 8: return detail::download<8>(tensor, stream);
        case 16: return detail::download<16>(tensor, stream);
        default: break;
    }
    throw std::invalid_argument("pyscheduler::cuda::to_host: unsupported element size of " + to_string(tensor.dtype()));
}

}  // namespace pyscheduler::cuda
