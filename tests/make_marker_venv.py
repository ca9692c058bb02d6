"""Creates a virtual environment with a module installed only there.

Usage: python make_marker_venv.py DIR
tests/test_environment.cpp then checks that the embedded interpreter imports it.
"""
import pathlib
import subprocess
import sys
import venv

target = pathlib.Path(sys.argv[1])
venv.create(target, clear=True, with_pip=False, symlinks=True)
python = target / "bin" / "python"
purelib = subprocess.run(
    [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
    check=True, capture_output=True, text=True).stdout.strip()
pathlib.Path(purelib, "pyscheduler_venv_marker.py").write_text('WHERE = "marker venv"\n')
print("created", target, "with the marker in", purelib)
