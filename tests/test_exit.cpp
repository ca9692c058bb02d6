// Process exit in each state, in a child process (tests/exit_child.cpp): exit code 0,
// no crash, no hang, and what Python printed reaches the pipe.
#include <gtest/gtest.h>

#include <string>

#include "child_process.hpp"

namespace {

using pyscheduler::test::ChildResult;
using pyscheduler::test::run_command;

ChildResult run_child(const std::string& mode) {
    // `timeout` turns a hang into a failure (exit code 124) instead of a stuck ctest.
    return run_command("timeout 60 '" PYSCHEDULER_EXIT_CHILD "' " + mode);
}

class ProcessExit : public ::testing::TestWithParam<const char*> {};

TEST_P(ProcessExit, IsCleanAndLosesNoOutput) {
    auto r = run_child(GetParam());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("python saw"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("numpy numpy"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("Traceback"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("ERROR"), std::string::npos) << r.output;
}

INSTANTIATE_TEST_SUITE_P(States, ProcessExit,
                         ::testing::Values("local_handler", "static_idle", "static_with_queued_work", "static_shut_down",
                                           "leaked_idle",
                                           "exit_with_local_handler", "static_while_python_runs",
                                           "leaked_while_python_never_returns", "exit_while_python_never_returns"));

TEST(ProcessExit, PythonIsFinalizedBeforeStaticDestructors) {
    // Extension modules (scipy's _uarray) keep Python objects in C++ statics made after
    // Python started; Python must end before those die, as it does in a python process.
    auto r = run_child("local_handler");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("static destructor: python finalized"), std::string::npos) << r.output;
}

TEST(ProcessExit, PythonIsLeftRunningWhileAHandlerExists) {
    // A handler destroyed among the static destructors (after those of the modules
    // imported after it) or never: Python is not finalized under it.
    for (const char* mode : {"static_idle", "static_shut_down", "leaked_idle", "exit_with_local_handler"}) {
        auto r = run_child(mode);
        EXPECT_EQ(r.exit_code, 0) << mode << ": " << r.output;
        EXPECT_NE(r.output.find("static destructor: python running"), std::string::npos) << mode << ": " << r.output;
    }
}

TEST(ProcessExit, StaticHandlerWaitsForTheCallInProgress) {
    // The destructor drains, so the call that was running when main() returned
    // finishes (and what it printed is not lost) before the process ends.
    auto r = run_child("static_while_python_runs");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("slow call finished"), std::string::npos) << r.output;
}

}  // namespace
