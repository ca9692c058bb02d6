// The embedded interpreter sees the Python environment the build chose (a venv
// included), or the one PYSCHEDULER_PYTHON / VIRTUAL_ENV name, with PYTHONPATH and
// PYTHONHOME unset. Checked in child processes (tests/env_child.cpp), against a venv
// that tests/make_marker_venv.py creates with a module installed only there.
#include <gtest/gtest.h>

#include <string>

#include "child_process.hpp"

namespace {

using pyscheduler::test::ChildResult;
using pyscheduler::test::run_command;

ChildResult run_child(const std::string& env) {
    return run_command("env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV -u PYSCHEDULER_PYTHON " + env +
                       " timeout 60 '" PYSCHEDULER_ENV_CHILD "'");
}

const std::string kVenv = PYSCHEDULER_MARKER_VENV;

TEST(Environment, DefaultIsTheInterpreterTheBuildWasConfiguredWith) {
    auto r = run_child("");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("prefix=" PYSCHEDULER_BUILD_PYTHON_PREFIX "\n"), std::string::npos) << r.output;
}

TEST(Environment, OverrideSelectsAVenvAndItsPackages) {
    auto r = run_child("PYSCHEDULER_PYTHON='" + kVenv + "/bin/python'");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("prefix=" + kVenv + "\n"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("marker=marker venv"), std::string::npos) << r.output;
}

TEST(Environment, ActivatedVirtualEnvIsHonoured) {
    auto r = run_child("VIRTUAL_ENV='" + kVenv + "'");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("marker=marker venv"), std::string::npos) << r.output;
}

TEST(Environment, WrongOverrideIsAnErrorNamingThePath) {
    auto r = run_child("PYSCHEDULER_PYTHON=/nonexistent/bin/python");
    EXPECT_EQ(r.exit_code, 3) << r.output;
    EXPECT_NE(r.output.find("PYSCHEDULER_PYTHON=/nonexistent/bin/python"), std::string::npos) << r.output;
}

TEST(Environment, WrongVirtualEnvIsAnErrorNamingThePath) {
    auto r = run_child("VIRTUAL_ENV=/nonexistent/venv");
    EXPECT_EQ(r.exit_code, 3) << r.output;
    EXPECT_NE(r.output.find("/nonexistent/venv/bin/python"), std::string::npos) << r.output;
}

}  // namespace
