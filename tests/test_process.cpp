// InterpreterKind::Process: each worker is a child process running the function
// (tests/python/pyscheduler_test_process.py, whose items are (operation, argument)
// tuples). Crashes, os._exit, kill -9 and call_timeout fail exactly the call they hit,
// and the worker comes back; arrays travel through shared memory; the host's death
// takes its workers with it (tests/process_child.cpp).
#include <pyscheduler/dlpack.hpp>
#include <signal.h>
#include <sys/types.h>

#include <cerrno>
#include <fstream>
#include <iterator>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "child_process.hpp"
#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

using namespace pybind11::literals;

HandlerOptions process_workers(std::size_t workers = 1, std::size_t batch_size = 1) {
    HandlerOptions o;
    o.interpreter = InterpreterKind::Process;
    o.workers = workers;
    o.batch_size = batch_size;
    return o;
}

InvokeHandler load_process(const HandlerOptions& o, const std::string& function = "run") {
    return python().loadPythonModule("pyscheduler_test_process", function, o);
}

/// The commit function of an item (operation, argument).
auto op(std::string operation) {
    return [operation = std::move(operation)](auto argument) { return std::make_tuple(operation, argument); };
}

std::future<long> queue_op(InvokeHandler& h, const std::string& operation, long argument) {
    return h.queue_invoke(op(operation), cast_to<long>(), argument);
}

/// The pid of a worker process, through a synchronous invoke (round robin over workers).
long worker_pid(InvokeHandler& h) {
    return h.invoke<std::vector<long>>(std::vector<std::tuple<std::string, long>>{{"pid", 0}}).at(0);
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

/// A file that a hanging call writes its pid into once it has started.
struct StartedFile {
    std::string path = "/tmp/pyscheduler-test-process-" + std::to_string(::getpid()) + "-" +
                       std::to_string(counter()++);
    ~StartedFile() { std::remove(path.c_str()); }
    static std::atomic<int>& counter() {
        static std::atomic<int> n{0};
        return n;
    }
    /// The pid the call wrote, once it has; -1 after kNoHang.
    long wait_for_pid() const {
        long pid = -1;
        eventually([&] {
            std::ifstream in(path);
            return static_cast<bool>(in >> pid);
        });
        return pid;
    }
};

bool process_is_gone(long pid) {
    if (::kill(static_cast<pid_t>(pid), 0) != 0) return errno == ESRCH;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string pid_field, name, state;
    stat >> pid_field >> name >> state;
    return state == "Z" || state.empty();  // a zombie has ended; its reaper is not us
}

TEST(ProcessWorkers, RunTheFunctionInChildProcessesThatShareTheLoad) {
    auto h = load_process(process_workers(2, 4));
    std::vector<std::future<long>> futures;
    for (long i = 0; i < 400; ++i) futures.push_back(queue_op(h, "square", i));
    for (long i = 0; i < 400; ++i) EXPECT_EQ(futures[i].get(), i * i);
    std::set<long> pids{worker_pid(h), worker_pid(h)};
    EXPECT_EQ(pids.size(), 2u);
    EXPECT_EQ(pids.count(::getpid()), 0u);
    // Slow items: whichever worker is free takes the next batch, so both run some.
    std::vector<std::future<long>> slow;
    for (long i = 0; i < 40; ++i) slow.push_back(h.queue_invoke(op("sleep"), [](py::object) { return 0L; }, 0.005));
    for (auto& f : slow) f.get();
    const QueueStats stats = h.get_queue_stats();
    ASSERT_EQ(stats.workers.size(), 2u);
    EXPECT_EQ(stats.completed, 440u);
    EXPECT_GT(stats.workers[0].items, 0u);
    EXPECT_GT(stats.workers[1].items, 0u);
}

TEST(ProcessWorkers, SeeTheHostsEnvironment) {
    auto h = load_process(process_workers());
    auto seen = h.queue_invoke(op("environment"), [](py::object r) {
                     return std::make_tuple(r[py::int_(0)].cast<std::string>(), r[py::int_(1)].cast<std::string>(),
                                            r[py::int_(2)].cast<std::vector<std::string>>());
                 }, 0L).get();
    detail::GilHold gil;
    py::module_ sys = py::module_::import("sys");
    EXPECT_EQ(std::get<0>(seen), sys.attr("prefix").cast<std::string>());
    EXPECT_EQ(std::get<1>(seen), sys.attr("executable").cast<std::string>());
    EXPECT_EQ(std::get<2>(seen), sys.attr("path").cast<std::vector<std::string>>());
}

TEST(ProcessWorkers, KillNineFailsExactlyTheRunningBatchAndTheWorkerComesBack) {
    auto h = load_process(process_workers(1, 1));
    StartedFile started;
    auto hung = h.queue_invoke(op("hang"), cast_to<long>(), started.path);
    std::vector<std::future<long>> behind;
    for (long i = 0; i < 20; ++i) behind.push_back(queue_op(h, "square", i));
    const long pid = started.wait_for_pid();
    ASSERT_GT(pid, 0);
    ASSERT_EQ(::kill(static_cast<pid_t>(pid), SIGKILL), 0);
    const std::string what = what_of<WorkerLost>([&] { hung.get(); });
    EXPECT_TRUE(contains(what, "worker process " + std::to_string(pid) + " was killed by signal 9 (SIGKILL)")) << what;
    EXPECT_TRUE(contains(what, "pyscheduler_test_process.run (process worker 0)")) << what;
    for (long i = 0; i < 20; ++i) EXPECT_EQ(behind[i].get(), i * i);  // queued items are not lost
    const long restarted = worker_pid(h);
    EXPECT_NE(restarted, pid);
    EXPECT_TRUE(eventually([&] { return process_is_gone(pid); }));
    const QueueStats stats = h.get_queue_stats();
    EXPECT_EQ(stats.failed, 1u);
    EXPECT_EQ(stats.completed, 20u);
}

TEST(ProcessWorkers, ASegfaultOrOsExitFailsItsBatchOnly) {
    auto h = load_process(process_workers(1, 1));
    auto segfault = queue_op(h, "segfault", 0);
    auto a = queue_op(h, "square", 3);
    auto exited = queue_op(h, "exit", 7);
    auto b = queue_op(h, "square", 4);
    const std::string crashed = what_of<WorkerLost>([&] { segfault.get(); });
    EXPECT_TRUE(contains(crashed, "was killed by signal 11 (SIGSEGV) while running a call")) << crashed;
    EXPECT_EQ(a.get(), 9);
    EXPECT_TRUE(contains(what_of<WorkerLost>([&] { exited.get(); }), "exited with status 7 while running a call"));
    EXPECT_EQ(b.get(), 16);
}

// A worker that dies with calls of the host's unread (sent behind the one that killed
// it) makes Linux report ECONNRESET on the host's end, and report it before the
// replies the worker sent before it died. Those replies are results all the same: the
// host reads them, then the end of the connection. The four items are staged while the
// handler is paused, so that they are sent together (four calls in flight); the first
// one's callback holds the executor until the worker has answered `a` and died running
// `exited`, with `b` unread. `a` used to fail with the death of its worker.
TEST(ProcessWorkers, RepliesSentBeforeTheWorkersDeathAreResultsEvenWithCallsUnread) {
    HandlerOptions o = process_workers(1, 1);
    o.prefetch_depth = 4;  // room in the ring for all four
    auto h = load_process(o);
    h.pause();
    auto x = h.queue_invoke(op("square"), [](py::object result) {
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        return result.cast<long>();
    }, 2L);
    auto a = queue_op(h, "square", 3);
    auto exited = queue_op(h, "exit", 7);
    auto b = queue_op(h, "square", 4);
    ASSERT_TRUE(eventually([&] { return h.get_queue_stats().commit_queue_size == 0; }));
    h.resume();
    EXPECT_EQ(x.get(), 4);
    EXPECT_EQ(a.get(), 9);
    EXPECT_TRUE(contains(what_of<WorkerLost>([&] { exited.get(); }), "exited with status 7 while running a call"));
    EXPECT_EQ(b.get(), 16);
}

TEST(ProcessWorkers, CallTimeoutKillsTheCallAndRestartsTheWorker) {
    HandlerOptions o = process_workers(1, 1);
    o.call_timeout = std::chrono::milliseconds(300);
    auto h = load_process(o);
    const long before = worker_pid(h);
    auto stuck = h.queue_invoke(op("sleep"), [](py::object) { return 0L; }, 600.0);
    auto after = queue_op(h, "square", 5);
    const std::string what = what_of<Timeout>([&] { stuck.get(); });
    EXPECT_TRUE(contains(what, "ran longer than call_timeout (0.3 s); its worker process was killed")) << what;
    EXPECT_EQ(after.get(), 25);
    EXPECT_TRUE(eventually([&] { return process_is_gone(before); }));
    // A synchronous invoke is a call too.
    EXPECT_THROW(h.invoke<std::vector<long>>(std::vector<std::tuple<std::string, double>>{{"sleep", 600.0}}), Timeout);
    EXPECT_EQ(queue_op(h, "square", 6).get(), 36);
}

TEST(ProcessWorkers, GiveUpAfterMaxRestartsInARow) {
    HandlerOptions o = process_workers(1, 1);
    o.max_restarts = 1;
    auto h = load_process(o);
    EXPECT_EQ(queue_op(h, "square", 2).get(), 4);
    auto first = queue_op(h, "exit", 1);
    auto second = queue_op(h, "exit", 1);  // runs in the restarted process, which dies too
    auto third = queue_op(h, "square", 3);
    EXPECT_THROW(first.get(), WorkerLost);
    EXPECT_THROW(second.get(), WorkerLost);
    const std::string down = what_of<WorkerLost>([&] { third.get(); });
    EXPECT_TRUE(contains(down, "the worker process is down: restarted 1 times in a row")) << down;
    EXPECT_TRUE(contains(down, "exited with status 1")) << down;
}

TEST(ProcessWorkers, ASuccessfulCallResetsTheRestartCount) {
    HandlerOptions o = process_workers(1, 1);
    o.max_restarts = 1;
    auto h = load_process(o);
    for (int round = 0; round < 3; ++round) {
        EXPECT_THROW(queue_op(h, "exit", 1).get(), WorkerLost);
        EXPECT_EQ(queue_op(h, "square", round).get(), round * round);
    }
}

TEST(ProcessWorkers, PythonErrorsKeepTheirTypeAndTheWorkersTraceback) {
    auto h = load_process(process_workers());
    try {
        queue_op(h, "raise", 7).get();
        ADD_FAILURE() << "did not throw";
    } catch (const PythonError& e) {
        EXPECT_EQ(e.type_name(), "ValueError");
        EXPECT_EQ(e.message(), "bad item 7");
        EXPECT_TRUE(contains(e.traceback(), "pyscheduler_test_process.py")) << e.traceback();
        EXPECT_TRUE(contains(e.traceback(), "raise ValueError")) << e.traceback();
    }
    // The @batched protocol: an exception instance as one item's result fails it alone.
    auto per_item = load_process(process_workers(1, 2), "run_or_error");
    const long pid = worker_pid(per_item);
    auto bad = queue_op(per_item, "error_item", 1);
    auto good = queue_op(per_item, "square", 3);
    EXPECT_TRUE(contains(what_of<PythonError>([&] { bad.get(); }), "raised KeyError: 1"));
    EXPECT_EQ(good.get(), 9);
    EXPECT_EQ(worker_pid(per_item), pid);  // an error costs the worker nothing
}

TEST(ProcessWorkers, WhatCannotBePickledFailsTheCallNotTheWorker) {
    auto h = load_process(process_workers());
    const long pid = worker_pid(h);
    auto lock_argument = h.queue_invoke(
        [] { return py::make_tuple("square", py::module_::import("threading").attr("Lock")()); }, cast_to<long>());
    EXPECT_TRUE(contains(what_of<PythonError>([&] { lock_argument.get(); }), "pickle"));
    const std::string result = what_of<PythonError>([&] { queue_op(h, "unpicklable", 0).get(); });
    EXPECT_TRUE(contains(result, "pickle")) << result;
    EXPECT_EQ(queue_op(h, "square", 8).get(), 64);
    EXPECT_EQ(worker_pid(h), pid);
}

/// Elements of the test arrays: 4 MiB of float64, larger than a first segment.
constexpr long kElements = 1 << 19;

/// A commit function: (operation, numpy.full(kElements, value)).
auto array_item(const char* operation, double value) {
    return [operation, value] {
        return py::make_tuple(operation, py::module_::import("numpy").attr("full")(kElements, value));
    };
}

TEST(ProcessWorkers, NumpyArraysTravelThroughSharedMemoryIntact) {
    // Large arrays go out of band: written once into a segment, read as views of it.
    // Each side keeps some of what it received (views of the other's segment) while
    // later calls go on: a segment still viewed must never be overwritten.
    auto h = load_process(process_workers(1, 4));
    GilSafe<py::list> kept_here = [] {  // results kept by the host: views of the worker's segment
        detail::GilHold gil;
        return GilSafe<py::list>(py::list());
    }();
    std::vector<std::future<double>> sums;
    for (int k = 0; k < 12; ++k) {
        sums.push_back(h.queue_invoke(array_item("keep", k), [&kept_here](py::object r) {
            kept_here.get().attr("append")(r);
            return r.attr("sum")().cast<double>();
        }));
    }
    for (int k = 0; k < 12; ++k) EXPECT_EQ(sums[k].get(), static_cast<double>(kElements) * k);
    auto in_worker =
        h.invoke<std::vector<std::vector<double>>>(std::vector<std::tuple<std::string, long>>{{"kept_sums", 0}});
    ASSERT_EQ(in_worker.at(0).size(), 12u);
    for (int k = 0; k < 12; ++k) EXPECT_EQ(in_worker[0][k], static_cast<double>(kElements) * k) << k;
    {
        detail::GilHold gil;
        ASSERT_EQ(kept_here.get().size(), 12u);
        for (int k = 0; k < 12; ++k) {
            EXPECT_EQ(kept_here.get()[k].attr("sum")().cast<double>(), static_cast<double>(kElements) * k) << k;
        }
    }
    // An array computed from an array comes back as a writable numpy array.
    auto doubled = h.queue_invoke(array_item("double", 1.5), [](py::object r) {
        return std::make_tuple(py::str(py::type::of(r).attr("__name__")).cast<std::string>(),
                               r.attr("sum")().cast<double>(), r.attr("flags").attr("writeable").cast<bool>());
    });
    EXPECT_EQ(doubled.get(), std::make_tuple(std::string("ndarray"), 3.0 * kElements, true));
}

TEST(ProcessWorkers, PayloadsOfEverySizeArriveIntact) {
    // Small payloads ride inside the socket message (up to 16 KiB with the header);
    // larger pickles go through the segments. Batch 1: each size is a call of its own,
    // the sizes on either side of where a call's pickle passes the limit.
    auto h = load_process(process_workers(1, 1));
    const std::vector<std::size_t> sizes{0,     1,     100,   16000, 16300, 16320, 16330,  16340,
                                         16350, 16360, 16384, 20000, 1 << 20, 3 << 20, 5};
    for (int round = 0; round < 2; ++round) {  // the second round reuses the segments
        std::vector<std::future<std::string>> echoed;
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            echoed.push_back(h.queue_invoke(op("echo"), cast_to<std::string>(),
                                            std::string(sizes[i], static_cast<char>('a' + i))));
        }
        for (std::size_t i = 0; i < sizes.size(); ++i) {
            EXPECT_EQ(echoed[i].get(), std::string(sizes[i], static_cast<char>('a' + i))) << sizes[i];
        }
    }
}

TEST(ProcessWorkers, ResultsInTheSegmentSurviveTheCallsSentBehindThem) {
    // Small calls go inline, so several are sent behind the running one; each result
    // (1 MiB) goes through the worker's segment. The worker must not write a result
    // over the one before it while the host has not read that one yet.
    auto h = load_process(process_workers(1, 1));
    constexpr int kItems = 200;
    std::vector<std::future<bool>> intact;
    for (int k = 0; k < kItems; ++k) {
        intact.push_back(h.queue_invoke(op("filled"),
                                        [k](py::object r) {
                                            const std::string s = r.cast<std::string>();
                                            return s.size() == (std::size_t{1} << 20) &&
                                                   s.find_first_not_of(static_cast<char>(k % 256)) == std::string::npos;
                                        },
                                        k));
    }
    int torn = 0;
    for (auto& f : intact) torn += f.get() ? 0 : 1;
    EXPECT_EQ(torn, 0) << "of " << kItems << " results";
}

/// Pauses `h`, queues what `queue` queues (n items), and resumes once they are all
/// staged or held by the paused executor: it then starts the first call and, in the
/// same GIL hold, the next one behind it.
template <class Queue>
void queue_while_paused(InvokeHandler& h, std::size_t n, Queue queue) {
    h.pause();
    queue();
    const bool staged = eventually([&] {
        const QueueStats s = h.get_queue_stats();
        return s.commit_queue_size == 0 && s.execute_queue_size + 1 >= n;
    });
    h.resume();
    ASSERT_TRUE(staged) << "the ring holds fewer than " << n - 1 << " items (prefetch_depth)";
}

TEST(ProcessWorkers, CallsSentBehindTheRunningOneOutliveTheWorkersDeath) {
    // While a call runs, the executor has already sent the next ones, up to
    // kProcessCallsInFlight in all (the child finds each when it replies). A kill fails
    // the running call only; the ones behind it never started, and all run in the
    // restarted process.
    constexpr std::size_t kBehind = detail::kProcessCallsInFlight - 1;
    HandlerOptions o = process_workers(1, 1);
    o.prefetch_depth = kBehind;  // the ring holds them while the executor holds the first
    auto h = load_process(o);
    StartedFile started;
    std::future<long> hung;
    std::vector<std::future<long>> behind;
    queue_while_paused(h, kBehind + 1, [&] {
        hung = h.queue_invoke(op("hang"), cast_to<long>(), started.path);
        for (std::size_t i = 0; i < kBehind; ++i) behind.push_back(queue_op(h, "pid", 0));
    });
    const long pid = started.wait_for_pid();
    ASSERT_GT(pid, 0);
    ASSERT_TRUE(eventually([&] { return h.get_queue_stats().execute_queue_size == 0; })) << "all sent behind";
    ASSERT_EQ(::kill(static_cast<pid_t>(pid), SIGKILL), 0);
    EXPECT_THROW(hung.get(), WorkerLost);
    const long ran_in = behind.front().get();
    EXPECT_GT(ran_in, 0);
    EXPECT_NE(ran_in, pid);
    for (std::size_t i = 1; i < kBehind; ++i) EXPECT_EQ(behind[i].get(), ran_in) << i;
    const QueueStats stats = h.get_queue_stats();
    EXPECT_EQ(stats.failed, 1u);
    EXPECT_EQ(stats.completed, kBehind);
}

TEST(ProcessWorkers, NoCallIsSentBehindARunningOneWhileAnotherWorkerIsIdle) {
    // The idle worker takes the second item at once: both run at the same time, in two
    // processes, instead of the second waiting in the first one's child.
    auto h = load_process(process_workers(2, 1));
    StartedFile first, second;
    auto a = h.queue_invoke(op("started_sleep"), cast_to<double>(), first.path);
    auto b = h.queue_invoke(op("started_sleep"), cast_to<double>(), second.path);
    const long pid_a = first.wait_for_pid();
    const long pid_b = second.wait_for_pid();
    EXPECT_GT(pid_a, 0);
    EXPECT_GT(pid_b, 0);
    EXPECT_NE(pid_a, pid_b);
    EXPECT_EQ(a.get(), 1.0);
    EXPECT_EQ(b.get(), 1.0);
}

TEST(ProcessWorkers, ACallSentBehindAnotherHasItsTimeoutCountedFromWhenItBeganToRun) {
    HandlerOptions o = process_workers(1, 1);
    o.call_timeout = std::chrono::milliseconds(2000);
    auto h = load_process(o);
    std::future<double> first, second;
    queue_while_paused(h, 2, [&] {  // 1.2 s each: the second ends 2.4 s after it was sent
        first = h.queue_invoke(op("sleep"), cast_to<double>(), 1.2);
        second = h.queue_invoke(op("sleep"), cast_to<double>(), 1.2);
    });
    EXPECT_EQ(first.get(), 1.2);
    EXPECT_EQ(second.get(), 1.2);
    EXPECT_EQ(h.get_queue_stats().timed_out, 0u);
}

TEST(ProcessWorkers, NoCallIsSentBehindOneWhoseArgumentsAreInSharedMemory) {
    // A call whose arrays went through the segment is read there by the child while it
    // runs; a call sent behind it would be written over them.
    HandlerOptions o = process_workers(1, 1);
    o.prefetch_depth = 8;
    auto h = load_process(o);
    std::vector<std::future<double>> sums;
    queue_while_paused(h, 6, [&] {
        for (int k = 0; k < 6; ++k) sums.push_back(h.queue_invoke(array_item("slow_sum", k), cast_to<double>()));
    });
    for (int k = 0; k < 6; ++k) EXPECT_EQ(sums[k].get(), static_cast<double>(kElements) * k) << k;
}

TEST(ProcessWorkers, TheWorkerProxyAnswersCallsInFlightInOrder) {
    // What the executor calls: start() sends (and says whether the payload went
    // inline), finish() returns the oldest call's result. An argument that cannot be
    // pickled fails its own start(), not the call already in flight.
    python();
    detail::GilHold gil;
    py::object worker = detail::start_process_worker("pyscheduler_test_process", "run", "proxy test", 0, 1, 0.0);
    auto call = [](const char* operation, py::object argument) {
        py::list batch;
        batch.append(py::make_tuple(operation, argument));
        return batch;
    };
    EXPECT_TRUE(worker.attr("start")(call("square", py::int_(3))).cast<bool>());
    EXPECT_TRUE(worker.attr("start")(call("square", py::int_(4))).cast<bool>());
    EXPECT_EQ(worker.attr("finish")().cast<std::vector<long>>(), std::vector<long>{9});
    EXPECT_EQ(worker.attr("finish")().cast<std::vector<long>>(), std::vector<long>{16});
    EXPECT_FALSE(worker.attr("start")(call("echo", py::bytes(std::string(1 << 20, 'x')))).cast<bool>());
    EXPECT_EQ(worker.attr("finish")()[py::int_(0)].cast<std::string>().size(), std::size_t{1} << 20);
    EXPECT_TRUE(worker.attr("start")(call("square", py::int_(5))).cast<bool>());
    py::object unpicklable = py::module_::import("threading").attr("Lock")();
    EXPECT_THROW(worker.attr("start")(call("echo", unpicklable)), py::error_already_set);
    EXPECT_EQ(worker.attr("finish")().cast<std::vector<long>>(), std::vector<long>{25});
    EXPECT_EQ(worker(call("square", py::int_(6))).cast<std::vector<long>>(), std::vector<long>{36});
    worker.attr("close")();
}

TEST(ProcessWorkers, CppTensorsArriveAsNumpyArrays) {
    // A pyscheduler::Tensor crosses as a numpy array viewing its memory: out of band
    // (through the segment) when large, inside the pickle when small.
    auto h = load_process(process_workers(1, 2), "describe");
    auto large = h.queue_invoke([] { return Tensor::from_vector(std::vector<double>(kElements, 2.0), {kElements}); },
                                cast_to<std::tuple<std::string, double>>());
    auto small = h.queue_invoke([] { return Tensor::from_vector(std::vector<float>{1, 2, 3}, {3}); },
                                cast_to<std::tuple<std::string, double>>());
    EXPECT_EQ(large.get(), std::make_tuple(std::string("ndarray"), 2.0 * kElements));
    EXPECT_EQ(small.get(), std::make_tuple(std::string("ndarray"), 6.0));
}

TEST(ProcessWorkers, DlpackResultsComeBackAsTheirOwnTypeWithoutACopy) {
    // Wrapped (tests/python) refuses to be pickled: it can only have come back through
    // DLPack, rebuilt by its module's from_dlpack as a view of the worker's segment.
    auto h = load_process(process_workers(1, 1), "wrapped");
    auto seen = h.queue_invoke([] { return 100000L; }, [](py::object r) {
        py::object array = r.attr("array");
        return std::make_tuple(py::str(py::type::of(r).attr("__name__")).cast<std::string>(),
                               array.attr("sum")().cast<double>(), array.attr("flags").attr("owndata").cast<bool>());
    });
    EXPECT_EQ(seen.get(), std::make_tuple(std::string("Wrapped"), 99999.0 * 100000 / 2, false));
}

TEST(ProcessWorkers, ArraySubclassesKeepTheirOwnPickling) {
    // A masked array speaks DLPack too, but must not travel as a bare buffer: its mask would be lost.
    auto h = load_process(process_workers(1, 1));
    auto seen = h.queue_invoke(
        [] {
            py::object masked = py::module_::import("numpy.ma").attr("masked_array");
            return py::make_tuple("echo", masked(py::make_tuple(1, 2, 3), "mask"_a = py::make_tuple(0, 1, 0)));
        },
        [](py::object r) {
            return std::make_tuple(py::str(py::type::of(r).attr("__name__")).cast<std::string>(),
                                   r.attr("mask").attr("sum")().cast<long>(), r.attr("sum")().cast<long>());
        });
    EXPECT_EQ(seen.get(), std::make_tuple(std::string("MaskedArray"), 1L, 4L));
}

/// A DLManagedTensor that claims to live on a CUDA device (its data is never read).
struct OnCuda {
    DLManagedTensor managed{};
    std::int64_t shape[1] = {4};
    float storage[4] = {};
    OnCuda() {
        managed.dl_tensor = DLTensor{storage, DLDevice{kDLCUDA, 0}, 1, DLDataType{kDLFloat, 32, 1}, shape, nullptr, 0};
        managed.deleter = [](DLManagedTensor* self) { delete static_cast<OnCuda*>(self->manager_ctx); };
        managed.manager_ctx = this;
    }
};

TEST(ProcessWorkers, ADeviceTensorIsRefusedWithTheReason) {
    auto h = load_process(process_workers(1, 1), "describe");
    auto f = h.queue_invoke([] { return Tensor::adopt(&(new OnCuda)->managed); },
                            cast_to<std::tuple<std::string, double>>());
    const std::string what = what_of<PythonError>([&] { f.get(); });
    EXPECT_TRUE(contains(what, "only CPU tensors do")) << what;
    auto next = h.queue_invoke([] { return Tensor::from_vector(std::vector<double>{1, 2}, {2}); },
                               cast_to<std::tuple<std::string, double>>());
    EXPECT_EQ(next.get(), std::make_tuple(std::string("ndarray"), 3.0)) << "the worker carries on";
}

TEST(ProcessWorkers, PauseDeadlinesGroupsAndDependenciesWorkAsOnAnyHandler) {
    HandlerOptions o = process_workers(2, 4);
    o.queue_capacity = 64;
    auto h = load_process(o);
    // Paused: items queue, and none runs until resume().
    h.pause();
    std::vector<std::future<long>> held;
    for (long i = 0; i < 20; ++i) held.push_back(queue_op(h, "square", i));
    ItemOptions late;
    late.deadline = std::chrono::steady_clock::now();
    auto expired = h.queue_invoke(late, op("square"), cast_to<long>(), 3L);
    EXPECT_EQ(h.get_queue_stats().completed, 0u);
    h.resume();
    for (long i = 0; i < 20; ++i) EXPECT_EQ(held[i].get(), i * i);
    EXPECT_THROW(expired.get(), Timeout);
    // A group (map) of 50 items, in input order.
    std::vector<long> inputs(50);
    std::iota(inputs.begin(), inputs.end(), 0L);
    auto mapped = h.map(inputs, op("square"), cast_to<long>());
    for (long i = 0; i < 50; ++i) EXPECT_EQ(mapped.futures[i].get(), i * i);
    // A Main handler's future as an argument: the process item waits for it, no thread blocked.
    auto in_host = python().loadPythonModule("pyscheduler_test_process", "run", HandlerOptions{});
    Future<long> seven_squared = in_host.submit(op("square"), cast_to<long>(), 7L);
    Future<long> again = h.submit(op("square"), cast_to<long>(), std::move(seven_squared));
    EXPECT_EQ(again.get(), 49L * 49L);
}

TEST(ProcessWorkers, ShutdownCancelFailsWhatHasNotReachedTheWorker) {
    auto h = load_process(process_workers(1, 1));
    StartedFile started;
    auto sleeping = h.queue_invoke(op("started_sleep"), cast_to<double>(), started.path);  // the worker, for 1 s
    std::vector<std::future<long>> behind;
    for (long i = 0; i < 20; ++i) behind.push_back(queue_op(h, "square", i));
    ASSERT_GT(started.wait_for_pid(), 0);
    h.shutdown(ShutdownMode::Cancel);
    EXPECT_EQ(sleeping.get(), 1.0) << "a call already in the worker finishes";
    int values = 0, cancelled = 0, other = 0;
    for (long i = 0; i < 20; ++i) {
        try {
            (behind[i].get() == i * i ? values : other)++;
        } catch (const Cancelled&) {
            ++cancelled;
        } catch (...) {
            ++other;
        }
    }
    EXPECT_EQ(values + cancelled, 20);
    EXPECT_EQ(other, 0);
    EXPECT_GE(cancelled, 1);
}

TEST(ProcessWorkers, ChildrenMayPollOnlyWhileTheHostHasACoreForEachWorkerProcessAndMore) {
    // The host counts its worker processes (every handler's) and tells each call's child
    // whether it may poll for the next call (POLL in the call's header) or must park.
    python();  // the interpreter
    auto host_value = [](const char* name) {
        detail::GilHold gil;
        return detail::process_host_module().attr(name).cast<long>();
    };
    auto poll_flag = [] {
        detail::GilHold gil;
        return detail::process_host_module().attr("_poll_flag")().cast<long>();
    };
    const long cores = host_value("_CORES");
    const long poll = host_value("POLL");
    const long before = host_value("_workers");
    {
        auto one = load_process(process_workers(1));
        EXPECT_EQ(host_value("_workers"), before + 1);
        EXPECT_EQ(poll_flag(), before + 1 < cores ? poll : 0);
        auto as_many_as_cores = load_process(process_workers(static_cast<std::size_t>(cores)));
        EXPECT_EQ(host_value("_workers"), before + 1 + cores);
        EXPECT_EQ(poll_flag(), 0);
        EXPECT_EQ(queue_op(as_many_as_cores, "square", 7).get(), 49);
    }
    EXPECT_EQ(host_value("_workers"), before);

    // The flag travels in the header, inline and through the segment alike.
    detail::GilHold gil;
    py::module_ host = detail::process_host_module();
    py::module_ socket = py::module_::import("socket");
    py::tuple pair = socket.attr("socketpair")(socket.attr("AF_UNIX"), socket.attr("SOCK_SEQPACKET"));
    py::object sender = host.attr("Channel")(pair[0]);
    py::object receiver = host.attr("Channel")(pair[1]);
    for (std::size_t size : {std::size_t{10}, std::size_t{1} << 20}) {
        for (long flags : {poll, 0L}) {
            py::list box;
            box.append(py::bytes(std::string(size, 'x')));
            sender.attr("send")(py::bytes("C"), box, flags);
            py::tuple received = receiver.attr("receive")();
            EXPECT_EQ(received[1].cast<std::string>().size(), size);
            EXPECT_EQ(receiver.attr("peer_says_poll").cast<bool>(), flags != 0) << size;
        }
    }
    pair[0].attr("close")();
    pair[1].attr("close")();
}

TEST(ProcessWorkers, OptionsTheyCannotHonourAreRefused) {
    HandlerOptions main_kind;
    main_kind.call_timeout = std::chrono::seconds(1);
    EXPECT_TRUE(contains(what_of<std::invalid_argument>([&] { load_process(main_kind); }),
                         "call_timeout needs InterpreterKind::Process"));
    HandlerOptions negative = process_workers();
    negative.max_restarts = -1;
    EXPECT_TRUE(contains(what_of<std::invalid_argument>([&] { load_process(negative); }),
                         "max_restarts must not be negative"));
    auto h = load_process(process_workers());
    const std::string stream = what_of<std::invalid_argument>([&] { h.stream<long>(op("square"), 1L); });
    EXPECT_TRUE(contains(stream, "a generator cannot leave its process")) << stream;
}

TEST(ProcessWorkers, ImportErrorsInTheWorkerAreInvalidArgument) {
    const std::string missing = what_of<std::invalid_argument>(
        [] { python().loadPythonModule("pyscheduler_no_such_module", "f", process_workers()); });
    EXPECT_TRUE(contains(missing, "cannot load pyscheduler_no_such_module.f")) << missing;
    EXPECT_TRUE(contains(missing, "ModuleNotFoundError")) << missing;
    const std::string not_callable = what_of<std::invalid_argument>([] { load_process(process_workers(), "not_callable"); });
    EXPECT_TRUE(contains(not_callable, "is not callable (it is a int)")) << not_callable;
}

TEST(ProcessWorkers, ManyProducersAndInvokesWhileWorkersAreKilled) {
    // Stress: 4 producers and 2 invoking threads on 3 workers, while this thread
    // kill -9s worker processes. Every future completes: with its value, or with
    // WorkerLost for the batches that were running when a kill landed.
    HandlerOptions o = process_workers(3, 8);
    o.max_restarts = 1000;
    auto h = load_process(o);
    std::atomic<long> values{0}, lost{0}, wrong{0}, invokes{0};
    std::atomic<bool> producing{true};
    std::vector<std::thread> threads;
    for (int p = 0; p < 4; ++p) {
        threads.emplace_back([&] {
            std::vector<std::pair<long, std::future<long>>> futures;
            for (long i = 0; i < 600; ++i) futures.emplace_back(i, queue_op(h, "square", i));
            for (auto& [i, f] : futures) {
                try {
                    (f.get() == i * i ? values : wrong)++;
                } catch (const WorkerLost&) {
                    ++lost;
                } catch (...) {
                    ++wrong;
                }
            }
        });
    }
    for (int t = 0; t < 2; ++t) {
        threads.emplace_back([&] {
            while (producing.load()) {
                try {
                    worker_pid(h);
                    ++invokes;
                } catch (const WorkerLost&) {
                }
            }
        });
    }
    for (int kill = 0; kill < 5; ++kill) {
        const long pid = worker_pid(h);
        ::kill(static_cast<pid_t>(pid), SIGKILL);
        eventually([&] { return process_is_gone(pid); });
    }
    for (int p = 0; p < 4; ++p) threads[p].join();
    producing = false;
    for (auto& t : threads) {
        if (t.joinable()) t.join();
    }
    EXPECT_EQ(values + lost, 2400);
    EXPECT_EQ(wrong, 0);
    EXPECT_GT(values, 0);
    EXPECT_GT(invokes, 0);
}

/// tests/process_child.cpp in `mode`: its output, and the worker pids it printed.
/// The output goes through a file: workers that outlived the host would hold a pipe
/// open, and reading it to its end would wait for them.
std::pair<ChildResult, std::vector<long>> run_host(const std::string& mode) {
    const std::string out = "/tmp/pyscheduler-test-process-host-" + std::to_string(::getpid()) + "-" + mode;
    ChildResult r = run_command("timeout 120 '" PYSCHEDULER_PROCESS_CHILD "' " + mode + " > '" + out + "'");
    std::ifstream file(out);
    r.output.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
    std::remove(out.c_str());
    std::vector<long> pids;
    std::istringstream lines(r.output);
    for (std::string line; std::getline(lines, line);) {
        if (line.rfind("worker ", 0) == 0) pids.push_back(std::stol(line.substr(7)));
    }
    return {r, pids};
}

class HostDeath : public ::testing::TestWithParam<const char*> {};

TEST_P(HostDeath, TakesBusyWorkerProcessesWithIt) {
    auto [r, pids] = run_host(GetParam());
    EXPECT_NE(r.output.find("both workers busy"), std::string::npos) << r.output;
    ASSERT_EQ(pids.size(), 2u) << r.output;
    for (long pid : pids) {
        ASSERT_GT(pid, 0) << r.output;  // the host saw the call start in that worker
        EXPECT_TRUE(eventually([&] { return process_is_gone(pid); })) << pid;
    }
}

INSTANTIATE_TEST_SUITE_P(Ways, HostDeath, ::testing::Values("sigkill", "exit", "return_with_leaked_handler"));

}  // namespace
}  // namespace pyscheduler::test
