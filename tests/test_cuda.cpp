// pyscheduler/cuda.hpp. Without a GPU: argument checks and the error a missing device
// gives. With one (and torch or cupy on the Python side): uploads on a commit thread's
// own stream, batched matrix products in Python, results checked against a CPU
// reference. GPU tests GTEST_SKIP() when cudaGetDeviceCount finds no device.
#include <pyscheduler/cuda.hpp>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

#define PYSCHEDULER_REQUIRE_GPU() \
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device on this machine"

#define PYSCHEDULER_REQUIRE_GPU_LIBRARY(library)                                                             \
    PYSCHEDULER_REQUIRE_GPU();                                                                               \
    if (!python().loadPythonModule("pyscheduler_test_gpu", "available").invoke<bool>(std::string(library))) \
    GTEST_SKIP() << library << " with CUDA is not available to Python here"

/// A fake CUDA tensor (never dereferenced): for argument checks that need no device.
struct FakeDeviceTensor {
    float storage[4]{};
    std::int64_t shape[1] = {4};
    DLManagedTensor managed{};
    FakeDeviceTensor() {
        managed.dl_tensor = DLTensor{storage, DLDevice{kDLCUDA, 0}, 1, DLDataType{kDLFloat, 32, 1}, shape, nullptr, 0};
        managed.deleter = nullptr;
    }
};

TEST(CudaArguments, CopiesNeedTheRightKindOfSource) {
    FakeDeviceTensor fake;
    Tensor device_tensor = Tensor::adopt(&fake.managed);
    EXPECT_NE(what_of<std::invalid_argument>([&] { cuda::to_device(device_tensor); })
                  .find("the source must be a CPU tensor, not cuda:0"),
              std::string::npos);
    Tensor host = Tensor::from_vector(std::vector<float>(4), {4});
    EXPECT_NE(what_of<std::invalid_argument>([&] { cuda::to_host(host); }).find("the source must be a CUDA tensor, not cpu"),
              std::string::npos);
    EXPECT_NE(what_of<std::invalid_argument>([&] { cuda::to_device(Tensor()); }).find("an empty Tensor"),
              std::string::npos);
}

TEST(CudaWithoutDevice, AllocationFailsWithTheCudaErrorNotACrash) {
    if (cuda::device_count() > 0) GTEST_SKIP() << "this machine has a CUDA device";
    const std::string msg = what_of<cuda::Error>([] { cuda::empty<float>({16}); });
    EXPECT_EQ(msg.rfind("pyscheduler::cuda: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(" failed: "), std::string::npos) << msg;
}

TEST(CudaDevice, RoundTripAndEmpty) {
    PYSCHEDULER_REQUIRE_GPU();
    std::vector<std::int32_t> values(1000);
    for (int i = 0; i < 1000; ++i) values[i] = i * 7 - 300;
    const std::vector<std::int32_t> expected = values;
    Tensor host = Tensor::from_vector(std::move(values), {10, 100});
    Tensor device = cuda::to_device(host);
    EXPECT_EQ(device.device().device_type, kDLCUDA);
    EXPECT_EQ(device.byte_size(), host.byte_size());
    EXPECT_NE(device.data(), host.data());
    Tensor back = cuda::to_host(device);
    ASSERT_EQ(back.numel(), 1000);
    EXPECT_EQ(std::vector<std::int32_t>(back.data_as<std::int32_t>(), back.data_as<std::int32_t>() + 1000), expected);

    Tensor e = cuda::empty<double>({3, 5}, 0);
    EXPECT_EQ(e.device().device_type, kDLCUDA);
    EXPECT_EQ(e.dtype().bits, 64);
    EXPECT_TRUE(e.is_contiguous());
}

/// One item: A and B (n x n, float32) stacked as [2, n, n], and their product in double.
struct MatrixPair {
    std::vector<float> ab;
    std::vector<double> product;
};

MatrixPair random_pair(int n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    MatrixPair p{std::vector<float>(2 * n * n), std::vector<double>(n * n, 0.0)};
    for (float& x : p.ab) x = dist(rng);
    const float* a = p.ab.data();
    const float* b = p.ab.data() + n * n;
    for (int i = 0; i < n; ++i)
        for (int k = 0; k < n; ++k)
            for (int j = 0; j < n; ++j) p.product[i * n + j] += static_cast<double>(a[i * n + k]) * b[k * n + j];
    return p;
}

/// Relative Frobenius error of a device result against a CPU reference.
double relative_error(const Tensor& device_result, const std::vector<double>& reference) {
    Tensor host = cuda::to_host(device_result);
    const float* c = host.data_as<float>();
    double diff = 0;
    double norm = 0;
    for (std::size_t i = 0; i < reference.size(); ++i) {
        diff += (c[i] - reference[i]) * (c[i] - reference[i]);
        norm += reference[i] * reference[i];
    }
    return std::sqrt(diff / norm);
}

/// Uploads on the commit thread's own stream, multiplies in Python with `function`,
/// and checks every product.
void matmul_pipeline(const char* function) {
    constexpr int kN = 64;
    constexpr int kItems = 48;
    cudaStream_t upload = nullptr;
    cuda::check(cudaStreamCreateWithFlags(&upload, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    std::vector<MatrixPair> pairs;
    for (int i = 0; i < kItems; ++i) pairs.push_back(random_pair(kN, 1234u + i));
    {
        auto h = python().loadPythonModule("pyscheduler_test_gpu", function, 8, 2);
        std::vector<std::future<double>> futures;
        for (int i = 0; i < kItems; ++i) {
            futures.push_back(h.queue_invoke(
                [&pairs, i, upload] {
                    Tensor host = Tensor::from_vector(std::vector<float>(pairs[i].ab), {2, kN, kN});
                    return cuda::to_device(host, 0, upload);  // pageable source: safe to drop now
                },
                [&pairs, i](py::object product) {
                    return relative_error(Tensor::from_python(product), pairs[i].product);
                }));
        }
        for (int i = 0; i < kItems; ++i) EXPECT_LT(futures[i].get(), 1e-4) << "item " << i;
    }
    cuda::check(cudaStreamDestroy(upload), "cudaStreamDestroy");
}

TEST(CudaPipeline, TorchMultipliesUploadedMatricesInBatches) {
    PYSCHEDULER_REQUIRE_GPU_LIBRARY("torch");
    matmul_pipeline("torch_matmul");
}

TEST(CudaPipeline, CupyMultipliesUploadedMatricesInBatches) {
    PYSCHEDULER_REQUIRE_GPU_LIBRARY("cupy");
    matmul_pipeline("cupy_matmul");
}

}  // namespace
}  // namespace pyscheduler::test
