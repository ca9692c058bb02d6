"""``python -m pyscheduler --cmakedir | --includes``: where this installation keeps
the C++ headers and CMake package files (like ``python -m pybind11``)."""

import argparse
import sys

from . import cmake_dir, include_dir


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m pyscheduler")
    parser.add_argument("--cmakedir", action="store_true", help="print the CMake package directory")
    parser.add_argument("--includes", action="store_true", help="print the -I flag for the headers")
    args = parser.parse_args()
    if not (args.cmakedir or args.includes):
        parser.print_help()
        return 2
    if args.cmakedir:
        print(cmake_dir())
    if args.includes:
        print("-I" + include_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
