// tensors: camera-frame-like buffers handed to Python without a copy, and results
// handed back without a copy, through DLPack (pyscheduler/dlpack.hpp).
//
// Ownership, as this example uses it:
// - Tensor::from_vector takes over the frame's std::vector: no copy. The commit
//   function returns the Tensor; it becomes a Python object inside the executor's GIL
//   hold, and numpy.from_dlpack views the vector's buffer. The buffer is freed when
//   the last numpy view of it dies.
// - The gray image is a numpy array made by Python; Tensor::from_python imports it
//   without a copy and keeps it alive after Python drops it, until the Tensor dies
//   (on any thread: the destructor takes the GIL itself).
// With a CUDA device and torch, the same pipeline uploads frames with
// cuda::to_device on the commit thread's own stream and converts them with torch.
#include <pybind11/stl.h>
#include <pyscheduler/dlpack.hpp>
#include <pyscheduler/pyscheduler.hpp>
#ifdef PYSCHEDULER_EXAMPLE_CUDA
#include <pyscheduler/cuda.hpp>
#endif

#include <cstdint>
#include <iostream>
#include <memory>
#include <vector>

namespace py = pybind11;
using pyscheduler::Tensor;

constexpr int kHeight = 480, kWidth = 640, kFrames = 16;

/// A synthetic frame: a colour gradient that shifts with the frame number.
std::vector<std::uint8_t> capture(int n) {
    std::vector<std::uint8_t> rgb(static_cast<std::size_t>(kHeight) * kWidth * 3);
    for (int y = 0; y < kHeight; ++y) {
        for (int x = 0; x < kWidth; ++x) {
            std::uint8_t* p = &rgb[(static_cast<std::size_t>(y) * kWidth + x) * 3];
            p[0] = static_cast<std::uint8_t>(x + n);
            p[1] = static_cast<std::uint8_t>(y + 2 * n);
            p[2] = static_cast<std::uint8_t>(n * 8);
        }
    }
    return rgb;
}

double mean(const Tensor& gray) {
    double sum = 0;
    const float* g = gray.data_as<float>();
    for (std::int64_t i = 0; i < gray.numel(); ++i) sum += g[i];
    return sum / static_cast<double>(gray.numel());
}

struct Result {
    Tensor gray;
    bool frame_not_copied;
    bool result_not_copied;
};

int main() {
    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);
    auto grayscale = python.loadPythonModule("frames", "grayscale", /*batch_size=*/4, /*prefetch_depth=*/2);

    std::vector<std::future<Result>> results;
    for (int n = 0; n < kFrames; ++n) {
        auto sent = std::make_shared<std::uintptr_t>();
        results.push_back(grayscale.queue_invoke(
            [n, sent] {  // commit thread, no GIL: "capture" a frame and wrap it
                std::vector<std::uint8_t> frame = capture(n);
                *sent = reinterpret_cast<std::uintptr_t>(frame.data());
                return Tensor::from_vector(std::move(frame), {kHeight, kWidth, 3});
            },
            [sent](py::object out) {  // executor, GIL held
                auto [gray_array, seen] = out.cast<std::pair<py::object, std::uintptr_t>>();
                Tensor gray = Tensor::from_python(gray_array);
                const auto numpy_address = gray_array.attr("ctypes").attr("data").cast<std::uintptr_t>();
                const bool result_not_copied = numpy_address == reinterpret_cast<std::uintptr_t>(gray.data());
                return Result{std::move(gray), seen == *sent, result_not_copied};
            }));
    }
    bool zero_copy = true;
    for (int n = 0; n < kFrames; ++n) {
        Result r = results[n].get();
        zero_copy = zero_copy && r.frame_not_copied && r.result_not_copied;
        if (n % 5 == 0) {
            std::cout << "frame " << n << ": gray " << r.gray.shape()[0] << "x" << r.gray.shape()[1]
                      << ", mean " << mean(r.gray) << "\n";
        }
    }
    std::cout << "cpu: " << kFrames << " frames to numpy and back, "
              << (zero_copy ? "no copy either way" : "COPIED (unexpected)") << "\n";

#ifdef PYSCHEDULER_EXAMPLE_CUDA
    const bool torch = python.loadPythonModule("frames", "torch_available").invoke<bool>();
    if (pyscheduler::cuda::device_count() == 0 || !torch) {
        std::cout << "gpu: skipped (" << (torch ? "no CUDA device" : "torch with CUDA is not installed") << ")\n";
        return zero_copy ? 0 : 1;
    }
    cudaStream_t upload = nullptr;
    pyscheduler::cuda::check(cudaStreamCreateWithFlags(&upload, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    {
        auto on_gpu = python.loadPythonModule("frames", "grayscale_torch", 4, 2);
        std::vector<std::future<double>> means;
        for (int n = 0; n < kFrames; ++n) {
            means.push_back(on_gpu.queue_invoke(
                [n, upload] {  // upload on the commit thread's stream; torch's stream waits for it
                    Tensor frame = Tensor::from_vector(capture(n), {kHeight, kWidth, 3});
                    return pyscheduler::cuda::to_device(frame, 0, upload);
                },
                [](py::object gray) { return mean(pyscheduler::cuda::to_host(Tensor::from_python(gray))); }));
        }
        for (int n = 0; n < kFrames; n += 5) std::cout << "gpu frame " << n << ": mean " << means[n].get() << "\n";
    }
    pyscheduler::cuda::check(cudaStreamDestroy(upload), "cudaStreamDestroy");
#else
    std::cout << "gpu: not built (no CUDA toolkit)\n";
#endif
    return zero_copy ? 0 : 1;
}
