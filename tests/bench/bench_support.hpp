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

/// The machine's CPU time so far, from the first line of /proc/stat (clock ticks,
/// all CPUs): all of it, and what the hypervisor stole (time a vCPU wanted to run and
/// the host ran something else). Zeros where there is no /proc.
struct HostCpuTicks {
    double total = 0;
    double steal = 0;
};
inline HostCpuTicks host_cpu_ticks() {
    std::ifstream stat("/proc/stat");
    std::string cpu;
    HostCpuTicks t;
    double v[8] = {};  // user nice system idle iowait irq softirq steal
    if (!(stat >> cpu) || cpu != "cpu") return t;
    for (double& x : v) {
        if (!(stat >> x)) return {};
        t.total += x;
    }
    t.steal = v[7];
    return t;
}
/// Percent of the CPU time between two readings that the host stole.
inline double steal_percent(const HostCpuTicks& before, const HostCpuTicks& after) {
    const double total = after.total - before.total;
    return total > 0 ? 100 * (after.steal - before.steal) / total : 0;
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
