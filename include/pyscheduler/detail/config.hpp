// pyscheduler/detail/config.hpp - compiler and platform macros.
#pragma once

// Classes that hold pybind11 objects get hidden visibility, like pybind11's own
// namespace: each shared object that includes pyscheduler keeps its own private copy
// of the templates (the state they must share lives in the interpreter instead, see
// detail/interpreter.hpp), and GCC does not warn about a type more visible than its
// fields.
#if defined(__GNUC__) || defined(__clang__)
#define PYSCHEDULER_HIDDEN __attribute__((visibility("hidden")))
#else
#define PYSCHEDULER_HIDDEN
#endif
