// Shared helpers of the benchmarks.
#pragma once

#include <pyscheduler/pyscheduler.hpp>

namespace pyscheduler::bench {

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
