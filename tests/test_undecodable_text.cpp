// Python text that is not valid UTF-8 (lone surrogates, as os.fsdecode makes from
// undecodable file names) in every place pyscheduler turns Python text into C++ text:
// exception messages, type names and tracebacks (from the pipeline, invoke, callbacks
// and per-item exception results), import errors, and sys.path entries. What UTF-8
// cannot encode is escaped (backslashreplace), the rest kept intact; paths round-trip.
#include <algorithm>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

const std::string kEscaped = "caf\\udce9.txt";  // how 'caf\udce9.txt' reads after backslashreplace

InvokeHandler load_text(const std::string& function, std::size_t batch_size = 1) {
    return python().loadPythonModule("pyscheduler_test_undecodable", function, batch_size, 1);
}

/// Runs f, expects PythonError, returns it.
template <class F>
PythonError python_error_of(F&& f) {
    try {
        f();
    } catch (const PythonError& e) {
        return e;
    } catch (const std::exception& e) {
        ADD_FAILURE() << "threw another exception type: " << e.what();
    }
    ADD_FAILURE() << "no PythonError";
    return PythonError("", "", "", "");
}

TEST(UndecodableText, MessageFromTheBatchFunction) {
    auto h = load_text("raise_message");
    auto f = h.queue_invoke([] { return 1; }, cast_to<int>());
    const PythonError e = python_error_of([&] { f.get(); });
    EXPECT_EQ(e.type_name(), "ValueError");
    EXPECT_EQ(e.message(), "cannot open " + kEscaped + " (rest intact)");
    EXPECT_NE(e.traceback().find("cannot open " + kEscaped), std::string::npos) << e.traceback();
    EXPECT_NE(std::string(e.what()).find(kEscaped), std::string::npos);
}

TEST(UndecodableText, MessageFromSynchronousInvoke) {
    auto h = load_text("raise_message");
    const PythonError e = python_error_of([&] { h.invoke<void>(); });
    EXPECT_EQ(e.message(), "cannot open " + kEscaped + " (rest intact)");
}

TEST(UndecodableText, TypeName) {
    auto h = load_text("raise_type");
    auto f = h.queue_invoke([] { return 1; }, cast_to<int>());
    const PythonError e = python_error_of([&] { f.get(); });
    EXPECT_EQ(e.type_name(), "mod\\udcff.BadTypeError");
    EXPECT_EQ(e.message(), "plain message");
    EXPECT_NE(e.traceback().find("mod\\udcff.BadTypeError: plain message"), std::string::npos) << e.traceback();
}

TEST(UndecodableText, ExceptionWhoseStrRaisesKeepsTypeAndTraceback) {
    auto h = load_text("raise_str_raises");
    auto f = h.queue_invoke([] { return 1; }, cast_to<int>());
    const PythonError e = python_error_of([&] { f.get(); });
    EXPECT_EQ(e.type_name(), "pyscheduler_test_undecodable.StrRaises");
    EXPECT_EQ(e.message(), "<str() of the exception raised>");
    EXPECT_NE(e.traceback().find("raise_str_raises"), std::string::npos) << e.traceback();
}

TEST(UndecodableText, PerItemExceptionResults) {
    auto h = load_text("exception_per_item", 4);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 8; ++i) futures.push_back(h.queue_invoke([i] { return i; }, cast_to<int>()));
    for (auto& f : futures) EXPECT_EQ(python_error_of([&] { f.get(); }).message(), "item " + kEscaped);
}

TEST(UndecodableText, PythonErrorInsideACallback) {
    auto h = load_text("identity");
    auto raiser = python().loadPythonModule("pyscheduler_test_undecodable", "raise_message");
    auto f = h.queue_invoke([] { return 1; }, [&](py::object) { return raiser.invoke<int>(); });
    const PythonError e = python_error_of([&] { f.get(); });
    EXPECT_EQ(e.message(), "cannot open " + kEscaped + " (rest intact)");
}

TEST(UndecodableText, ImportErrorOfLoadPythonModule) {
    const std::string what = what_of<std::invalid_argument>(
        [] { python().loadPythonModule("pyscheduler_test_undecodable_import", "f"); });
    EXPECT_NE(what.find("ImportError: missing \\udcff\\udcfe"), std::string::npos) << what;
}

TEST(UndecodableText, PathsRoundTripThroughAddPathAndOwnGilHandlers) {
    const std::string dir = "/nonexistent/pyscheduler-\xff-dir";  // not UTF-8
    python().add_path(dir);
    python().add_path(dir);  // once only
    std::vector<std::string> entries;
    {
        detail::GilHold gil;
        for (py::handle entry : py::module_::import("sys").attr("path")) {
            entries.push_back(detail::path_from_python(entry));
        }
    }
    EXPECT_EQ(std::count(entries.begin(), entries.end(), dir), 1) << "os.fsdecode / os.fsencode round trip";
#if PY_VERSION_HEX >= 0x030C0000
    HandlerOptions o;
    o.interpreter = InterpreterKind::OwnGil;
    o.workers = 2;  // sys.path is copied into each worker's interpreter
    auto h = python().loadPythonModule("pyscheduler_test_own_gil", "square", o);
    EXPECT_EQ(h.invoke<int>(5), 25);
#endif
}

}  // namespace
}  // namespace pyscheduler::test
