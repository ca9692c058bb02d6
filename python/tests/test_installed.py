"""The installed package: the C++ headers and CMake package files are where it says."""
import pathlib
import subprocess
import sys

import pyscheduler


def test_cmake_dir_holds_the_package_config():
    cmake_dir = pathlib.Path(pyscheduler.cmake_dir())
    assert (cmake_dir / "pyschedulerConfig.cmake").is_file()
    assert (cmake_dir / "pyschedulerConfigVersion.cmake").is_file()
    assert (cmake_dir / "FindConcurrentQueue.cmake").is_file()


def test_include_dir_holds_the_headers():
    include = pathlib.Path(pyscheduler.include_dir())
    assert (include / "pyscheduler" / "pyscheduler.hpp").is_file()
    assert (include / "pyscheduler" / "detail" / "pipeline.hpp").is_file()


def test_module_entry_point_prints_the_paths():
    out = subprocess.run([sys.executable, "-m", "pyscheduler", "--cmakedir", "--includes"],
                         check=True, capture_output=True, text=True).stdout.split()
    assert out == [pyscheduler.cmake_dir(), "-I" + pyscheduler.include_dir()]
