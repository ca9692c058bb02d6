// Process exit in each state, in a child process (tests/exit_child.cpp): exit code 0,
// no crash, no hang, and what Python printed reaches the pipe.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace {

struct ChildResult {
    int exit_code = -1;
    std::string output;
};

ChildResult run_child(const std::string& mode) {
    // `timeout` turns a hang into a failure (exit code 124) instead of a stuck ctest.
    const std::string cmd = "timeout 60 '" PYSCHEDULER_EXIT_CHILD "' " + mode + " 2>&1";
    ChildResult r;
    FILE* pipe = popen(cmd.c_str(), "r");
    if (pipe == nullptr) return r;
    std::array<char, 4096> buf{};
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
    int status = pclose(pipe);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
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
                         ::testing::Values("local_handler", "static_idle", "static_with_queued_work", "leaked_idle",
                                           "exit_with_local_handler"));

}  // namespace
