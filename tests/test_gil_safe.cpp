// Python objects and the GIL: what owns_python_references_v sees (the types that
// queue_invoke and invoke refuse as results; tests/compile_fail proves the refusals),
// and GilSafe<T>, the holder that may leave the GIL: made in a callback, handed out by
// a future, copied and destroyed on threads without the GIL. This binary is built with
// PYBIND11_ASSERT_GIL_HELD_INCREF_DECREF, so a reference count touched without the GIL
// throws instead of racing.
#include <array>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

static_assert(owns_python_references_v<py::handle>);
static_assert(owns_python_references_v<py::object>);
static_assert(owns_python_references_v<const py::list&>);
static_assert(owns_python_references_v<std::vector<py::object>>);
static_assert(owns_python_references_v<std::optional<py::dict>>);
static_assert(owns_python_references_v<std::pair<int, py::str>>);
static_assert(owns_python_references_v<std::tuple<int, std::string, std::vector<py::int_>>>);
static_assert(owns_python_references_v<std::map<std::string, py::object>>);
static_assert(owns_python_references_v<std::array<py::object, 2>>);
static_assert(!owns_python_references_v<int>);
static_assert(!owns_python_references_v<std::string>);
static_assert(!owns_python_references_v<std::vector<std::pair<int, double>>>);
static_assert(!owns_python_references_v<std::array<int, 3>>);
static_assert(!owns_python_references_v<GilSafe<py::object>>);
static_assert(!owns_python_references_v<std::vector<GilSafe<py::list>>>);
static_assert(!owns_python_references_v<PyObject*>, "a raw pointer is manual reference counting, the seed's way");

/// sys.getrefcount(object), with the GIL.
long refcount(const GilSafe<py::object>& held) {
    detail::GilHold gil;
    return static_cast<long>(Py_REFCNT(held.get().ptr()));
}

TEST(GilSafe, LeavesTheCallbackAndLivesOnThreadsWithoutTheGil) {
    auto h = python().loadPythonModule("pyscheduler_test_funcs", "boxed", 4, 2);
    std::vector<std::future<GilSafe<py::object>>> futures;
    for (int i = 0; i < 20; ++i) {
        futures.push_back(h.queue_invoke([i] { return i; }, [](py::object r) { return GilSafe(std::move(r)); }));
    }
    std::vector<GilSafe<py::object>> kept;
    for (auto& f : futures) kept.push_back(f.get());  // this thread does not hold the GIL
    ASSERT_FALSE(detail::this_thread_holds_gil());

    const long before = refcount(kept[0]);
    {
        std::vector<GilSafe<py::object>> copies(kept.begin(), kept.end());  // copies take the GIL
        EXPECT_EQ(refcount(kept[0]), before + 1);
        std::thread other([moved = std::move(copies)] {});  // destroyed on another thread, no GIL there either
        other.join();
    }
    EXPECT_EQ(refcount(kept[0]), before) << "every copy gave its reference back";

    detail::GilHold gil;
    for (int i = 0; i < 20; ++i) {
        EXPECT_EQ(kept[i].get().cast<std::vector<int>>(), std::vector<int>{i});
    }
}

TEST(GilSafe, MovedFromAndTakenAreEmpty) {
    python();  // starts the interpreter (each test runs in a process of its own)
    GilSafe<py::list> held;
    EXPECT_FALSE(held);
    {
        detail::GilHold gil;
        held = GilSafe(py::list(2));
    }
    EXPECT_TRUE(held);
    GilSafe<py::list> moved = std::move(held);
    EXPECT_FALSE(held);  // NOLINT(bugprone-use-after-move): moved-from is specified empty
    EXPECT_TRUE(moved);
    detail::GilHold gil;
    py::list list = std::move(moved).take();
    EXPECT_FALSE(moved);  // NOLINT(bugprone-use-after-move)
    EXPECT_EQ(list.size(), 2u);
}

TEST(GilSafe, MovingAnObjectInNeedsNoGil) {
    python();
    py::object real;
    {
        detail::GilHold gil;
        real = py::str("made with the GIL");
    }
    ASSERT_FALSE(detail::this_thread_holds_gil());
    std::optional<GilSafe<py::object>> held;
    held.emplace(std::move(real));  // no reference count changes hands
    EXPECT_TRUE(*held);
    held.reset();  // the destructor takes the GIL to let go
    EXPECT_FALSE(GilSafe(py::object())) << "an empty holder is fine anywhere";
}

TEST(GilSafe, ObjectsOfOwnGilInterpretersAreRefused) {
#if PY_VERSION_HEX < 0x030C0000
    GTEST_SKIP() << "own-GIL sub-interpreters need CPython 3.12+";
#else
    HandlerOptions o;
    o.interpreter = InterpreterKind::OwnGil;
    auto h = python().loadPythonModule("pyscheduler_test_own_gil", "squares", o);
    auto f = h.queue_invoke([] { return 3; }, [](py::object r) { return GilSafe(std::move(r)); });
    const std::string what = what_of<std::invalid_argument>([&] { f.get(); });
    EXPECT_NE(what.find("main interpreter only"), std::string::npos) << what;
    EXPECT_EQ(h.queue_invoke([] { return 3; }, cast_to<long>()).get(), 9) << "the handler carries on";
#endif
}

}  // namespace
}  // namespace pyscheduler::test
