// The sanitizer set-up must catch our leaks: lsan_suppressions.txt may hide only
// CPython's and extension modules' intentional ones. Meaningful in the ASan build
// only (configure.sh --asan); elsewhere the tests skip.
#include <gtest/gtest.h>

#include <string>

#include "child_process.hpp"

namespace {

using pyscheduler::test::ChildResult;
using pyscheduler::test::run_command;

ChildResult run_child(const std::string& mode) {
    return run_command("timeout 120 '" PYSCHEDULER_LEAK_CHILD "' " + mode);
}

#ifdef PYSCHEDULER_ASAN
constexpr bool kAsanBuild = true;
#else
constexpr bool kAsanBuild = false;
#endif

// A macro, not a function: GTEST_SKIP() returns from the function it is written in.
#define SKIP_WITHOUT_ASAN() \
    if (!kAsanBuild) GTEST_SKIP() << "leak detection is checked in the ASan build (configure.sh --asan --test)"

TEST(LeakDetection, CleanRunReportsNothing) {
    SKIP_WITHOUT_ASAN();
    auto r = run_child("none");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.output.find("LeakSanitizer"), std::string::npos) << r.output;
}

TEST(LeakDetection, LeakedTaskNodeIsReported) {
    SKIP_WITHOUT_ASAN();
    auto r = run_child("task_node");
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("LeakSanitizer: detected memory leaks"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("make_task"), std::string::npos) << r.output;
}

TEST(LeakDetection, LeakedPythonObjectIsReported) {
    SKIP_WITHOUT_ASAN();
    auto r = run_child("py_object");
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("LeakSanitizer: detected memory leaks"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("PyLong_From"), std::string::npos) << r.output;
}

}  // namespace
