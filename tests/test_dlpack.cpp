// pyscheduler/dlpack.hpp: Tensor ownership, zero-copy exchange with numpy in both
// directions (data addresses compared), every dtype, strided views, errors, and the
// DLPack stream protocol (with a fake device producer: no GPU needed).
#include <pyscheduler/dlpack.hpp>

#include <cstdint>
#include <map>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

using pyscheduler::operator==;

InvokeHandler load_tensors(const std::string& function, std::size_t batch_size = 1) {
    return python().loadPythonModule("pyscheduler_test_tensors", function, batch_size, 2);
}

// --- Tensor on its own ---------------------------------------------------------------

TEST(Tensor, FromVectorTakesTheBufferAndDescribesIt) {
    std::vector<float> v(12);
    for (int i = 0; i < 12; ++i) v[i] = static_cast<float>(i);
    const float* buffer = v.data();
    Tensor t = Tensor::from_vector(std::move(v), {3, 4});
    EXPECT_EQ(t.data(), buffer);  // taken over, not copied
    EXPECT_EQ(t.ndim(), 2);
    EXPECT_EQ(std::vector<std::int64_t>(t.shape().begin(), t.shape().end()), (std::vector<std::int64_t>{3, 4}));
    EXPECT_EQ(std::vector<std::int64_t>(t.strides().begin(), t.strides().end()), (std::vector<std::int64_t>{4, 1}));
    EXPECT_TRUE(t.dtype() == (DLDataType{kDLFloat, 32, 1}));
    EXPECT_TRUE(t.device() == (DLDevice{kDLCPU, 0}));
    EXPECT_EQ(t.numel(), 12);
    EXPECT_EQ(t.itemsize(), 4u);
    EXPECT_EQ(t.byte_size(), 48u);
    EXPECT_TRUE(t.is_contiguous());
    EXPECT_EQ(t.data_as<float>()[7], 7.0f);

    Tensor moved = std::move(t);
    EXPECT_FALSE(t);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
    EXPECT_EQ(t.data(), nullptr);
    EXPECT_EQ(t.ndim(), 0);
    EXPECT_EQ(moved.data(), buffer);
}

TEST(Tensor, FromVectorRejectsAShapeThatDoesNotFit) {
    EXPECT_NE(what_of<std::invalid_argument>([] { Tensor::from_vector(std::vector<int>(6), {4, 2}); })
                  .find("the shape holds 8 elements but the vector has 6"),
              std::string::npos);
    EXPECT_NE(what_of<std::invalid_argument>([] { Tensor::from_vector(std::vector<int>(6), {-2, -3}); })
                  .find("negative extent -2 in dimension 0"),
              std::string::npos);
    EXPECT_NE(what_of<std::invalid_argument>([] {
                  Tensor::from_vector(std::vector<std::uint16_t>(2), {2}, dtype_of<float>);
              }).find("does not have the size of the element type"),
              std::string::npos);
}

TEST(Tensor, DataAsNamesBothDtypesOnAMismatch) {
    Tensor t = Tensor::from_vector(std::vector<std::int64_t>{1, 2}, {2});
    EXPECT_NE(what_of<std::invalid_argument>([&] { (void)t.data_as<double>(); }).find("holds int64, not float64"),
              std::string::npos);
}

/// A DLManagedTensor whose deleter counts its calls.
struct Counted {
    DLManagedTensor managed{};
    std::int64_t shape[1] = {4};
    float storage[4] = {1, 2, 3, 4};
    int deleted = 0;

    explicit Counted(DLDevice device = {kDLCPU, 0}, DLDataType dtype = {kDLFloat, 32, 1}) {
        managed.dl_tensor = DLTensor{storage, device, 1, dtype, shape, nullptr, 0};
        managed.manager_ctx = this;
        managed.deleter = [](DLManagedTensor* self) { ++static_cast<Counted*>(self->manager_ctx)->deleted; };
    }
};

TEST(Tensor, TheDeleterRunsExactlyOnceThroughMovesAndResets) {
    Counted a;
    Counted b;
    {
        Tensor ta = Tensor::adopt(&a.managed);
        EXPECT_EQ(std::vector<std::int64_t>(ta.strides().begin(), ta.strides().end()), (std::vector<std::int64_t>{1}))
            << "compact strides when the producer gives none";
        Tensor moved(std::move(ta));
        Tensor tb = Tensor::adopt(&b.managed);
        tb = std::move(moved);  // frees b, takes a
        EXPECT_EQ(b.deleted, 1);
        EXPECT_EQ(a.deleted, 0);
        tb.reset();
        EXPECT_EQ(a.deleted, 1);
    }
    EXPECT_EQ(a.deleted, 1);
    EXPECT_EQ(b.deleted, 1);
}

TEST(Tensor, AdoptRefusesUnsupportedTensorsAndLeavesThemToTheCaller) {
    Counted lanes({kDLCPU, 0}, {kDLFloat, 32, 4});
    EXPECT_NE(what_of<std::invalid_argument>([&] { Tensor::adopt(&lanes.managed); }).find("lanes > 1"), std::string::npos);
    Counted opencl({kDLOpenCL, 0});
    EXPECT_NE(what_of<std::invalid_argument>([&] { Tensor::adopt(&opencl.managed); }).find("unsupported device"),
              std::string::npos);
    Counted opaque({kDLCPU, 0}, {kDLOpaqueHandle, 64, 1});
    EXPECT_NE(what_of<std::invalid_argument>([&] { Tensor::adopt(&opaque.managed); }).find("unsupported dtype"),
              std::string::npos);
    EXPECT_EQ(lanes.deleted + opencl.deleted + opaque.deleted, 0);
}

// --- to Python and back, through the pipeline -----------------------------------------

struct Seen {
    std::string dtype;
    std::vector<std::int64_t> shape;
    std::uintptr_t address;
    std::vector<double> values;
};

Seen seen_by_numpy(py::object o) {
    auto t = o.cast<py::tuple>();
    return {t[0].cast<std::string>(), t[1].cast<std::vector<std::int64_t>>(), t[2].cast<std::uintptr_t>(),
            t[3].cast<std::vector<double>>()};
}

template <class T>
class TensorDtypes : public ::testing::Test {};

template <class T, const char* Name>
struct Case {
    using type = T;
    static constexpr const char* numpy_name = Name;
};
constexpr char kInt8[] = "int8", kInt16[] = "int16", kInt32[] = "int32", kInt64[] = "int64", kUint8[] = "uint8",
               kUint16[] = "uint16", kUint32[] = "uint32", kUint64[] = "uint64", kFloat16[] = "float16",
               kFloat32[] = "float32", kFloat64[] = "float64";
using Dtypes = ::testing::Types<Case<std::int8_t, kInt8>, Case<std::int16_t, kInt16>, Case<std::int32_t, kInt32>,
                                Case<std::int64_t, kInt64>, Case<std::uint8_t, kUint8>, Case<std::uint16_t, kUint16>,
                                Case<std::uint32_t, kUint32>, Case<std::uint64_t, kUint64>,
#if defined(__FLT16_MANT_DIG__)
                                Case<_Float16, kFloat16>,
#endif
                                Case<float, kFloat32>, Case<double, kFloat64>>;
TYPED_TEST_SUITE(TensorDtypes, Dtypes);

TYPED_TEST(TensorDtypes, NumpySeesTheSameMemoryAndValues) {
    using T = typename TypeParam::type;
    auto h = load_tensors("describe", 4);
    std::vector<std::future<Seen>> futures;
    std::vector<std::uintptr_t> addresses(8);
    for (int k = 0; k < 8; ++k) {
        futures.push_back(h.queue_invoke(
            [k, &addresses] {
                std::vector<T> v(6);
                for (int i = 0; i < 6; ++i) v[i] = static_cast<T>(i + k);
                addresses[k] = reinterpret_cast<std::uintptr_t>(v.data());
                return Tensor::from_vector(std::move(v), {2, 3});
            },
            seen_by_numpy));
    }
    for (int k = 0; k < 8; ++k) {
        Seen s = futures[k].get();
        EXPECT_EQ(s.dtype, TypeParam::numpy_name);
        EXPECT_EQ(s.shape, (std::vector<std::int64_t>{2, 3}));
        EXPECT_EQ(s.address, addresses[k]) << "numpy must see the vector's own buffer";
        for (int i = 0; i < 6; ++i) EXPECT_EQ(s.values[i], static_cast<double>(i + k));
    }
}

TEST(TensorBool, BytesReachNumpyAsBool) {
    auto h = load_tensors("describe");
    std::vector<std::uint8_t> v{1, 0, 0, 1, 1};
    const auto address = reinterpret_cast<std::uintptr_t>(v.data());
    auto f = h.queue_invoke([&v] { return Tensor::from_vector(std::move(v), {5}, dtype_of<bool>); }, seen_by_numpy);
    Seen s = f.get();
    EXPECT_EQ(s.dtype, "bool");
    EXPECT_EQ(s.address, address);
    EXPECT_EQ(s.values, (std::vector<double>{1, 0, 0, 1, 1}));
}

TEST(TensorPipeline, ZeroCopyBothWaysWithTheCommitOffTheGil) {
    auto h = load_tensors("echo", 8);
    struct Back {
        std::uintptr_t sent, numpy, imported;
        float last;
    };
    std::vector<std::future<Back>> futures;
    for (int k = 0; k < 64; ++k) {
        auto sent = std::make_shared<std::uintptr_t>(0);
        futures.push_back(h.queue_invoke(
            [k, sent] {
                EXPECT_FALSE(detail::this_thread_holds_gil()) << "a commit returning a Tensor runs without the GIL";
                std::vector<float> v(16, static_cast<float>(k));
                *sent = reinterpret_cast<std::uintptr_t>(v.data());
                return Tensor::from_vector(std::move(v), {4, 4});
            },
            [sent](py::object array) {
                Tensor t = array.cast<Tensor>();
                return Back{*sent, array.attr("ctypes").attr("data").cast<std::uintptr_t>(),
                            reinterpret_cast<std::uintptr_t>(t.data()), t.data_as<float>()[15]};
            }));
    }
    for (int k = 0; k < 64; ++k) {
        Back b = futures[k].get();
        EXPECT_EQ(b.numpy, b.sent) << "C++ -> numpy copied";
        EXPECT_EQ(b.imported, b.sent) << "numpy -> C++ copied";
        EXPECT_EQ(b.last, static_cast<float>(k));
    }
}

TEST(TensorPipeline, AResultTensorOutlivesItsPythonObjectAndDiesOffTheGil) {
    auto h = load_tensors("doubled", 4);
    std::vector<std::future<Tensor>> futures;
    for (int k = 0; k < 16; ++k) {
        futures.push_back(h.queue_invoke([k] { return Tensor::from_vector(std::vector<std::int32_t>{k, k + 1}, {2}); },
                                         [](py::object o) { return o.cast<Tensor>(); }));
    }
    for (int k = 0; k < 16; ++k) {
        Tensor t = futures[k].get();  // destroyed here, on a thread without the GIL
        ASSERT_EQ(t.numel(), 2);
        EXPECT_EQ(t.data_as<float>()[0], 2.0f * k);
        EXPECT_EQ(t.data_as<float>()[1], 2.0f * (k + 1));
    }
}

// --- importing from numpy --------------------------------------------------------------

TEST(TensorImport, StridedViewsKeepTheirLayout) {
    auto h = load_tensors("views");
    h.invoke(
        [](py::object dict) {
            std::map<std::string, std::vector<std::int64_t>> expected_strides{{"every_other_column", {6, 2}},
                                                                              {"transposed", {1, 6}},
                                                                              {"window", {6, 1}},
                                                                              {"reversed_rows", {-6, 1}}};
            for (auto [name, view] : dict.cast<py::dict>()) {
                const std::string key = name.cast<std::string>();
                SCOPED_TRACE(key);
                const auto flat = view.attr("ravel")().attr("tolist")().cast<std::vector<std::int32_t>>();
                Tensor t = Tensor::from_python(view);
                EXPECT_EQ(std::vector<std::int64_t>(t.strides().begin(), t.strides().end()), expected_strides.at(key));
                EXPECT_FALSE(t.is_contiguous());
                EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data()),
                          view.attr("ctypes").attr("data").cast<std::uintptr_t>());
                ASSERT_EQ(t.ndim(), 2);
                std::size_t n = 0;
                for (std::int64_t i = 0; i < t.shape()[0]; ++i) {
                    for (std::int64_t j = 0; j < t.shape()[1]; ++j) {
                        EXPECT_EQ(t.data_as<std::int32_t>()[i * t.strides()[0] + j * t.strides()[1]], flat.at(n++));
                    }
                }
                EXPECT_EQ(n, flat.size());
            }
        });
}

TEST(TensorImport, KeepsTheProducerAliveUntilTheTensorDies) {
    auto h = load_tensors("make_tracked");
    auto alive = python().loadPythonModule("pyscheduler_test_tensors", "tracked_alive");
    Tensor t = h.invoke([](py::object array) { return array.cast<Tensor>(); }, 1000);
    EXPECT_TRUE(alive.invoke<bool>()) << "Python dropped the array, the Tensor still holds it";
    double sum = 0;
    for (std::int64_t i = 0; i < t.numel(); ++i) sum += t.data_as<double>()[i];
    EXPECT_EQ(sum, 999.0 * 1000 / 2);
    t.reset();
    EXPECT_FALSE(alive.invoke<bool>()) << "the Tensor's deleter gave the array back";
}

TEST(TensorImport, ClearErrors) {
    (void)python();
    detail::GilHold gil;
    EXPECT_NE(what_of<std::invalid_argument>([] { Tensor::from_python(py::int_(3)); })
                  .find("a int object has no __dlpack__ method"),
              std::string::npos);

    py::object array = py::module_::import("numpy").attr("zeros")(3);
    py::object capsule = array.attr("__dlpack__")();
    Tensor first = Tensor::from_python(capsule);
    EXPECT_EQ(first.numel(), 3);
    EXPECT_NE(what_of<std::invalid_argument>([&] { Tensor::from_python(capsule); }).find("consumed already"),
              std::string::npos);

    py::object dates = py::module_::import("pyscheduler_test_tensors").attr("unsupported_datetime")();
    const std::string msg = what_of<std::invalid_argument>([&] { Tensor::from_python(dates); });
    EXPECT_NE(msg.find("numpy.ndarray.__dlpack__() raised BufferError"), std::string::npos) << msg;

    EXPECT_THROW(py::int_(3).cast<Tensor>(), py::cast_error);
}

TEST(TensorImport, RefusedCapsulesStayWithTheirOwner) {
    Counted bad({kDLCPU, 0}, {kDLFloat, 32, 2});
    (void)python();
    {
        detail::GilHold gil;
        py::object c = py::reinterpret_steal<py::object>(PyCapsule_New(&bad.managed, "dltensor", [](PyObject* self) {
            if (PyCapsule_IsValid(self, "dltensor")) {
                auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(self, "dltensor"));
                m->deleter(m);
            }
        }));
        EXPECT_NE(what_of<std::invalid_argument>([&] { Tensor::from_python(c); }).find("lanes > 1"), std::string::npos);
        EXPECT_EQ(bad.deleted, 0);
    }
    EXPECT_EQ(bad.deleted, 1) << "the capsule, still named dltensor, freed it";
}

TEST(TensorImport, NeedsTheGil) {
    (void)python();
    py::handle none = Py_None;
    EXPECT_NE(what_of<std::logic_error>([&] { Tensor::from_python(none); }).find("must hold the GIL"), std::string::npos);
}

// --- exporting to Python ------------------------------------------------------------------

TEST(TensorExport, SingleUseAndUnconsumedObjectsFreeTheirTensor) {
    Counted c;
    auto h = load_tensors("export_twice");
    {
        detail::GilHold gil;
        py::object unused = py::cast(Tensor::adopt(&c.managed));
        EXPECT_NE(py::repr(unused).cast<std::string>().find("float32 [4] on cpu"), std::string::npos);
    }
    EXPECT_EQ(c.deleted, 1) << "a Python object never consumed frees its tensor";

    Counted d;
    auto [capsule_type, error, device] = h.invoke(
        [](py::object o) { return o.cast<std::tuple<std::string, std::string, std::pair<int, int>>>(); },
        Tensor::adopt(&d.managed));
    EXPECT_EQ(capsule_type, "PyCapsule");
    EXPECT_NE(error.find("single-use"), std::string::npos) << error;
    EXPECT_EQ(device, (std::pair<int, int>{kDLCPU, 0})) << "__dlpack_device__ answers after the export";
    EXPECT_EQ(d.deleted, 1) << "the unconsumed capsule freed it";
}

TEST(TensorExport, NumpyFreesTheTensorWhenItsArrayDies) {
    Counted c;
    (void)python();
    detail::GilHold gil;
    py::object array = py::module_::import("numpy").attr("from_dlpack")(py::cast(Tensor::adopt(&c.managed)));
    EXPECT_EQ(array.attr("sum")().cast<double>(), 10.0);
    EXPECT_EQ(c.deleted, 0);
    array = py::none();
    EXPECT_EQ(c.deleted, 1);
}

// The DLPack stream protocol, with a fake CUDA tensor (its memory is never touched).
struct StreamCall {
    std::intptr_t producer = 0, consumer = 0;
    int device = -1, calls = 0;
};
StreamCall g_stream_call;

TEST(TensorExport, DlpackOrdersTheProducerStreamBeforeTheConsumers) {
    (void)python();
    // Exports a fake CUDA tensor whose producer stream is 7, passing `stream` (none:
    // no argument) to __dlpack__; returns the Python error, if any.
    auto export_with = [](std::optional<long> stream) {
        Counted c({kDLCUDA, 1});
        Tensor t = Tensor::adopt(&c.managed);
        t.set_producer_stream(7, [](std::intptr_t producer, std::intptr_t consumer, int device) {
            g_stream_call = {producer, consumer, device, g_stream_call.calls + 1};
        });
        std::string error;
        {
            detail::GilHold gil;
            py::object obj = py::cast(std::move(t));
            try {
                py::object dlpack = obj.attr("__dlpack__");
                py::object capsule = stream ? dlpack(py::arg("stream") = *stream) : dlpack();
            } catch (const py::error_already_set& e) {
                error = e.what();
            }
        }
        EXPECT_EQ(c.deleted, 1);
        return error;
    };
    EXPECT_EQ(export_with(std::nullopt), "");
    EXPECT_EQ(g_stream_call.calls, 1);
    EXPECT_EQ(g_stream_call.producer, 7);
    EXPECT_EQ(g_stream_call.consumer, 1) << "None means the legacy default stream";
    EXPECT_EQ(g_stream_call.device, 1);

    EXPECT_EQ(export_with(12345), "");
    EXPECT_EQ(g_stream_call.calls, 2);
    EXPECT_EQ(g_stream_call.consumer, 12345);

    EXPECT_EQ(export_with(-1), "");
    EXPECT_EQ(g_stream_call.calls, 2) << "-1: the consumer asked for no synchronization";

    EXPECT_NE(export_with(0).find("ValueError"), std::string::npos);
    EXPECT_EQ(g_stream_call.calls, 2);
}

}  // namespace
}  // namespace pyscheduler::test
