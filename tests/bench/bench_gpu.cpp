// GPU pipeline benchmark (DLPack + CUDA): the commit thread uploads pairs of n x n
// float32 matrices with cuda::to_device on its own stream while Python multiplies the
// previous batch with torch (tests/python/pyscheduler_test_gpu.py). Prefetch depth
// 1, 2 and 3 show how much of the upload hides behind the compute.
//
// Limits measured in the same run: upload_ns (one item's upload alone, synchronized)
// and compute_ns (the same torch function called directly through pybind11 on
// tensors already on the GPU, per item). Counters: x_serial = ns_per_item /
// (upload_ns + compute_ns) (below 1: overlap wins), x_bound = ns_per_item /
// max(upload_ns, compute_ns) (1.0 would be perfect overlap).
// Skips (SkipWithError) without a CUDA device or torch.
#include <benchmark/benchmark.h>
#include <pyscheduler/cuda.hpp>
#include <pyscheduler/pyscheduler.hpp>

#include <algorithm>
#include <chrono>
#include <random>
#include <string>
#include <vector>

namespace py = pybind11;
using pyscheduler::HandlerOptions;
using pyscheduler::PyManager;
using pyscheduler::Tensor;
namespace cuda = pyscheduler::cuda;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kN = 1024;
constexpr std::size_t kBatch = 4;
constexpr int kItems = 64;

PyManager& python() {
    static PyManager m = [] {
        PyManager p;
        p.add_path(PYSCHEDULER_TEST_PYTHON_DIR);
        return p;
    }();
    return m;
}

bool gpu_ready(benchmark::State& state) {
    if (cuda::device_count() == 0) {
        state.SkipWithError("no CUDA device");
        return false;
    }
    if (!python().loadPythonModule("pyscheduler_test_gpu", "available").invoke<bool>(std::string("torch"))) {
        state.SkipWithError("torch with CUDA is not available to Python");
        return false;
    }
    return true;
}

struct Stream {
    cudaStream_t s = nullptr;
    Stream() { cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"); }
    ~Stream() { (void)cudaStreamDestroy(s); }
};

Tensor host_pair() {
    std::mt19937 rng(42);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> ab(2 * static_cast<std::size_t>(kN) * kN);
    for (float& x : ab) x = dist(rng);
    return Tensor::from_vector(std::move(ab), {2, kN, kN});
}

double ns_since(Clock::time_point t0) { return std::chrono::duration<double, std::nano>(Clock::now() - t0).count(); }

double upload_ns_per_item(const Tensor& host, cudaStream_t stream) {
    constexpr int kReps = 16;
    const auto t0 = Clock::now();
    for (int i = 0; i < kReps; ++i) {
        Tensor d = cuda::to_device(host, 0, stream);
        cuda::check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    }
    return ns_since(t0) / kReps;
}

double compute_ns_per_item(const Tensor& host, cudaStream_t stream) {
    constexpr int kReps = 16;
    pyscheduler::detail::GilHold gil;
    py::module_ gpu = py::module_::import("pyscheduler_test_gpu");
    py::list uploaded;
    for (std::size_t i = 0; i < kBatch; ++i) uploaded.append(py::cast(cuda::to_device(host, 0, stream)));
    py::object batch = gpu.attr("to_torch")(uploaded);  // on the GPU once, outside the timing
    gpu.attr("torch_matmul")(batch);                    // warm-up (cuBLAS handles, kernels)
    gpu.attr("synchronize")();
    const auto t0 = Clock::now();
    for (int i = 0; i < kReps; ++i) gpu.attr("torch_matmul")(batch);
    gpu.attr("synchronize")();
    return ns_since(t0) / (kReps * static_cast<double>(kBatch));
}

void BM_GpuPipeline(benchmark::State& state) {
    if (!gpu_ready(state)) return;
    Stream upload;
    const Tensor host = host_pair();
    const double upload_ns = upload_ns_per_item(host, upload.s);
    const double compute_ns = compute_ns_per_item(host, upload.s);

    HandlerOptions o;
    o.batch_size = kBatch;
    o.prefetch_depth = static_cast<std::size_t>(state.range(0));
    auto matmul = python().loadPythonModule("pyscheduler_test_gpu", "torch_matmul", o);
    auto synchronize = python().loadPythonModule("pyscheduler_test_gpu", "synchronize");
    double total_ns = 0;
    for (auto _ : state) {
        const auto t0 = Clock::now();
        std::vector<std::future<int>> done;
        for (int i = 0; i < kItems; ++i) {
            done.push_back(matmul.queue_invoke([&host, &upload] { return cuda::to_device(host, 0, upload.s); },
                                               [](py::object) { return 0; }));
        }
        for (auto& f : done) f.get();
        synchronize.invoke<void>();
        const double ns = ns_since(t0);
        state.SetIterationTime(ns / 1e9);
        total_ns += ns;
    }
    const double ns_per_item = total_ns / (static_cast<double>(state.iterations()) * kItems);
    state.counters["items_per_s"] = 1e9 / ns_per_item;
    state.counters["ns_per_item"] = ns_per_item;
    state.counters["upload_ns"] = upload_ns;
    state.counters["compute_ns"] = compute_ns;
    state.counters["x_serial"] = ns_per_item / (upload_ns + compute_ns);
    state.counters["x_bound"] = ns_per_item / std::max(upload_ns, compute_ns);
}
BENCHMARK(BM_GpuPipeline)->Arg(1)->Arg(2)->Arg(3)->Iterations(5)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
