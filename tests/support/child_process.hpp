// Runs a command in a child process and collects its exit code and output, for the
// tests that must watch a whole process (exit, leaks, environments).
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace pyscheduler::test {

struct ChildResult {
    int exit_code = -1;  // 128 + signal number when killed by a signal
    std::string output;  // stdout and stderr together
};

/// Runs `command` through the shell with stderr folded into stdout.
inline ChildResult run_command(const std::string& command) {
    ChildResult r;
    FILE* pipe = popen((command + " 2>&1").c_str(), "r");
    if (pipe == nullptr) return r;
    std::array<char, 4096> buf{};
    std::size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
    const int status = pclose(pipe);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
}

}  // namespace pyscheduler::test
