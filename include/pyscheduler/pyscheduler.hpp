// pyscheduler/pyscheduler.hpp - umbrella header.
//
//   #include <pyscheduler/pyscheduler.hpp>
//
//   pyscheduler::PyManager python;                 // starts the embedded interpreter
//   python.add_path("/path/to/modules");
//   auto add = python.loadPythonModule("mymodule", "add");
//   int64_t sum = add.invoke<int64_t>(3000, -1234);  // synchronous
//
// See README.md for the pipeline (queue_invoke) and its guarantees.
#pragma once

#include "pyscheduler/errors.hpp"
#include "pyscheduler/future.hpp"
#include "pyscheduler/gil_safe.hpp"
#include "pyscheduler/group.hpp"
#include "pyscheduler/handler.hpp"
#include "pyscheduler/manager.hpp"
#include "pyscheduler/metrics.hpp"
#include "pyscheduler/options.hpp"
#include "pyscheduler/policy.hpp"
#include "pyscheduler/stats.hpp"
#include "pyscheduler/stream.hpp"

namespace pyscheduler {

/// The manager with the default policy; `PyManager::InvokeHandler` is its handler.
using PyManager = BasicPyManager<DefaultPolicy>;
using InvokeHandler = PyManager::InvokeHandler;

}  // namespace pyscheduler
