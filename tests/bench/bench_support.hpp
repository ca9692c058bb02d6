// Shared helpers of the benchmarks.
#pragma once

#include <pyscheduler/pyscheduler.hpp>

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

namespace pyscheduler::bench {

/// Nanoseconds of CPU that this process's threads whose names start with `prefix`
/// have used so far: the pipeline names its threads ("pys-commit", "pys-exec-<i>"),
/// and Linux keeps each thread's time on a CPU in /proc/self/task/<tid>/schedstat.
/// 0 where there is no /proc.
inline double threads_cpu_ns(std::string_view prefix) {
    double total = 0;
    std::error_code ec;
    for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
        std::ifstream comm(task.path() / "comm");
        std::string name;
        if (!std::getline(comm, name) || !name.starts_with(prefix)) continue;
        std::ifstream schedstat(task.path() / "schedstat");
        double ns = 0;
        if (schedstat >> ns) total += ns;
    }
    return total;
}

/// The manager every benchmark uses (one per policy, all on the one interpreter); its
/// sys.path holds tests/bench.
template <class Policy = DefaultPolicy>
BasicPyManager<Policy>& python() {
    static BasicPyManager<Policy> m = [] {
        BasicPyManager<Policy> p;
        p.add_path(PYSCHEDULER_BENCH_DIR);
        return p;
    }();
    return m;
}

}  // namespace pyscheduler::bench
