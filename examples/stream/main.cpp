// Streams: a Python generator's elements in C++ as they are produced.
//
//   ./configure.sh --run stream
//
// 1. A slow tokenizer: each word is printed when the generator yields it, not when
//    the whole text is done (time to first word vs. time to the last).
// 2. One element as the input of another item: element 3 of the stream feeds a second
//    handler while the stream is still being read.
// 3. An endless generator read for 5 elements, then dropped: the executor closes it,
//    and its finally block runs.
#include <pybind11/stl.h>
#include <pyscheduler/pyscheduler.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

int main() {
    using Clock = std::chrono::steady_clock;
    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);
    auto tokens = python.loadPythonModule("stream_module", "tokens");
    auto shout = python.loadPythonModule("stream_module", "shout");

    const auto t0 = Clock::now();
    auto ms = [&] { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); };
    auto words = tokens.stream<std::string>([] { return 0; });
    auto fourth = shout.submit([](const std::string& w) { return w; },
                               [](pybind11::object r) { return r.cast<std::string>(); }, words.element(3));
    int n = 0;
    for (const std::string& w : words) std::printf("%6.1f ms  word %2d: %s\n", ms(), n++, w.c_str());
    std::printf("element 3 through a second handler: %s\n", fourth.get().c_str());

    {
        auto sensor = python.loadPythonModule("stream_module", "readings");
        auto values = sensor.stream<long>([] { return 100; });
        for (int i = 0; i < 5; ++i) std::printf("reading %ld\n", *values.next());
    }  // the stream, then its handler: the generator is closed before the handler ends
    auto closed = python.loadPythonModule("stream_module", "was_closed").invoke<std::vector<long>>();
    std::printf("endless generator closed after 5 readings: %s\n", closed == std::vector<long>{100} ? "yes" : "no");
    return closed == std::vector<long>{100} ? 0 : 1;
}
