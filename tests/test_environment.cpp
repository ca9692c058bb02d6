// The embedded interpreter sees the Python environment the build chose (a venv
// included), or the one PYSCHEDULER_PYTHON / VIRTUAL_ENV name, with PYTHONPATH and
// PYTHONHOME unset. PYTHONPATH, when set, adds to it as it does for `python`; the
// working directory is not on sys.path (the seed implementation put it there). Checked
// in child processes (tests/env_child.cpp), against a venv that
// tests/make_marker_venv.py creates with a module installed only there.
#include <gtest/gtest.h>

#include <string>

#include "child_process.hpp"

namespace {

using pyscheduler::test::ChildResult;
using pyscheduler::test::run_command;

/// The child with `env` set, importing `module` if given, in `directory` if given.
ChildResult run_child(const std::string& env, const std::string& module = "", const std::string& directory = "") {
    return run_command((directory.empty() ? "" : "cd '" + directory + "' && ") +
                       "env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV -u PYSCHEDULER_PYTHON " + env +
                       " timeout 60 '" PYSCHEDULER_ENV_CHILD "' " + module);
}

// A module that lives only in tests/python, which nothing adds to sys.path here.
const std::string kModule = "pyscheduler_test_funcs";
const std::string kModuleDir = PYSCHEDULER_TEST_PYTHON_DIR;

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
    // InterpreterKind::Process: the worker process runs in the venv too.
    EXPECT_NE(r.output.find("worker purelib=" + kVenv + "/lib/"), std::string::npos) << r.output;
}

TEST(Environment, ActivatedVirtualEnvIsHonoured) {
    auto r = run_child("VIRTUAL_ENV='" + kVenv + "'");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("marker=marker venv"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("worker purelib=" + kVenv + "/lib/"), std::string::npos) << r.output;
}

TEST(Environment, PythonPathAddsToTheEnvironment) {
    auto r = run_child("PYTHONPATH='" + kModuleDir + "'", kModule);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("import=present"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("prefix=" PYSCHEDULER_BUILD_PYTHON_PREFIX "\n"), std::string::npos)
        << "the environment stays the build's" << r.output;
}

TEST(Environment, TheWorkingDirectoryIsNotOnSysPath) {
    auto r = run_child("", kModule, kModuleDir);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("import=absent"), std::string::npos) << r.output;
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
