// Streams (InvokeHandler::stream, stream.hpp): generators delivered element by element.
// Lengths 0, 1 and a million; errors mid-stream and at the start; bounded buffering
// with a slow reader; abandoned and closed streams closing their generators; many
// streams taking turns on one executor; shutdown with open streams; element futures
// as inputs of other items; own-GIL handlers; and a stress test of readers racing
// shutdown(Cancel).
#include <atomic>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

InvokeHandler streams(const std::string& function, const HandlerOptions& options = {}) {
    return python().loadPythonModule("pyscheduler_test_streams", function, options);
}

/// pyscheduler_test_streams.<name>(): the module's counters (the main interpreter's copy).
long module_counter(const char* name) { return streams(name).invoke<long>(); }

StreamOptions buffered(std::size_t n) {
    StreamOptions o;
    o.buffer = n;
    return o;
}

auto length(long n) {
    return [n] { return n; };
}

TEST(Stream, ZeroOneAndAMillionElements) {
    auto h = streams("counting");
    auto empty = h.stream<long>(length(0));
    EXPECT_EQ(empty.next(), std::nullopt);
    EXPECT_TRUE(empty.done());
    auto one = h.stream<long>(length(1));
    EXPECT_EQ(one.next(), 0);
    EXPECT_EQ(one.next(), std::nullopt);
    EXPECT_EQ(one.read(), 1u);

    auto big = h.stream<long>(length(1000000));
    long count = 0;
    bool in_order = true;
    for (long x : big) {
        in_order = in_order && x == count;
        ++count;
    }
    EXPECT_EQ(count, 1000000);
    EXPECT_TRUE(in_order);
    EXPECT_TRUE(big.done());
    EXPECT_EQ(h.get_queue_stats().total_enqueued, 3u) << "stream steps are not counted as items";
}

TEST(Stream, ErrorMidStreamComesAfterTheElementsBeforeIt) {
    auto h = streams("fail_after");
    auto s = h.stream<long>(length(5));
    for (long i = 0; i < 5; ++i) EXPECT_EQ(s.next(), i);
    EXPECT_NE(what_of<PythonError>([&] { s.next(); }).find("ValueError: failed after 5 elements"), std::string::npos);
    EXPECT_THROW(s.next(), PythonError) << "the error stays";
    EXPECT_THROW(s.try_next(), PythonError);
    EXPECT_TRUE(s.done());
}

TEST(Stream, ElementThatDoesNotConvertEndsTheStream) {
    auto h = streams("words");
    auto s = h.stream<std::string>(length(-6));
    for (int i = 0; i < 4; ++i) {
        std::string expected = "w";  // not "w" + std::to_string(i): GCC 12 warns falsely there (-Wrestrict)
        expected += std::to_string(i);
        EXPECT_EQ(s.next(), expected);
    }
    const std::string what = what_of<ResultError>([&] { s.next(); });
    EXPECT_NE(what.find("element 4 of the stream did not convert"), std::string::npos) << what;
}

TEST(Stream, FailuresBeforeTheFirstElement) {
    EXPECT_NE(what_of<PythonError>([] { streams("not_iterable").stream<long>(length(1)).next(); }).find("not iterable"),
              std::string::npos);
    EXPECT_NE(what_of<PythonError>([] { streams("raising").stream<long>(length(1)).next(); })
                  .find("the function itself failed"),
              std::string::npos);
    auto h = streams("counting");
    auto bad_commit = h.stream<long>([]() -> long { throw std::runtime_error("commit refused"); });
    EXPECT_EQ(what_of<std::runtime_error>([&] { bad_commit.next(); }), "commit refused");
    EXPECT_NE(what_of<std::invalid_argument>([&] { h.stream<long>(buffered(0), length(1)); }).find("buffer"),
              std::string::npos);
    h.shutdown();
    auto refused = h.stream<long>(length(3));
    EXPECT_THROW(refused.next(), Cancelled);
}

TEST(Stream, ASlowReaderBoundsHowFarTheGeneratorRuns) {
    auto h = streams("counting");
    const long before = module_counter("produced_count");
    constexpr std::size_t kBuffer = 8;
    auto s = h.stream<long>(buffered(kBuffer), length(100000));
    for (long i = 0; i < 200; ++i) {
        ASSERT_EQ(s.next(), i);
        const long produced = module_counter("produced_count") - before;
        ASSERT_LE(produced, i + 1 + static_cast<long>(kBuffer)) << "after reading " << i + 1;
        ASSERT_GE(produced, i + 1);
    }
}

TEST(Stream, ParkedStreamsLeaveTheExecutorToOtherWork) {
    auto h = streams("counting");
    std::vector<Stream<long>> open;
    for (int i = 0; i < 8; ++i) open.push_back(h.stream<long>(buffered(4), length(1000)));
    for (auto& s : open) EXPECT_EQ(s.next(), 0);  // every stream has started, none is read further
    auto other = h.queue_invoke(length(5), [](py::object generator) {
        long n = 0;
        for (auto x : generator) n += x.cast<long>();
        return n;
    });
    ASSERT_TRUE(completes(other));
    EXPECT_EQ(other.get(), 0 + 1 + 2 + 3 + 4);
    // Read round robin: each stream advances only as it is read, and all finish.
    std::vector<long> next(open.size(), 1);
    for (bool any = true; any;) {
        any = false;
        for (std::size_t i = 0; i < open.size(); ++i) {
            if (auto x = open[i].next()) {
                ASSERT_EQ(*x, next[i]++);
                any = true;
            }
        }
    }
    for (long n : next) EXPECT_EQ(n, 1000);
}

TEST(Stream, DroppedOrClosedStreamsCloseTheirGenerators) {
    auto h = streams("counting");
    const long before = module_counter("closed_count");
    {
        auto dropped = h.stream<long>(buffered(4), length(1000000));
        EXPECT_EQ(dropped.next(), 0);
    }
    auto closed = h.stream<long>(buffered(4), length(1000000));
    EXPECT_EQ(closed.next(), 0);
    closed.close();
    EXPECT_EQ(closed.next(), std::nullopt);
    EXPECT_TRUE(closed.done());
    EXPECT_TRUE(eventually([&] { return module_counter("closed_count") - before == 2; }));
    h.shutdown(ShutdownMode::Drain);  // nothing open any more: returns
}

TEST(Stream, ShutdownCancelEndsOpenStreamsAfterTheirBufferedElements) {
    auto h = streams("counting");
    const long before = module_counter("closed_count");
    auto parked = h.stream<long>(buffered(4), length(1000000));
    auto unread = h.stream<long>(buffered(4), length(1000000));
    EXPECT_EQ(parked.next(), 0);
    auto started = unread.element(0);  // ready once its generator runs
    ASSERT_TRUE(completes(started));
    h.shutdown(ShutdownMode::Cancel);
    long got = 0;
    EXPECT_THROW(
        {
            while (parked.next()) ++got;
        },
        Cancelled);
    EXPECT_LE(got, 4);
    EXPECT_THROW(
        {
            while (unread.next()) {
            }
        },
        Cancelled);
    EXPECT_EQ(module_counter("closed_count") - before, 2) << "shutdown returned after closing both generators";
}

TEST(Stream, DrainWaitsForAStreamBeingRead) {
    auto h = streams("counting");
    auto s = h.stream<long>(buffered(16), length(20000));
    long count = 0;
    std::thread reader([&] {
        while (s.next()) ++count;
    });
    h.shutdown(ShutdownMode::Drain);
    reader.join();
    EXPECT_EQ(count, 20000);
}

TEST(Stream, SizeHintFromThePythonSide) {
    auto h = streams("ranges");
    auto s = h.stream<long>(length(10));
    EXPECT_EQ(s.next(), 0);
    EXPECT_EQ(s.size_hint(), 10u);
    auto g = streams("counting").stream<long>(length(3));
    EXPECT_EQ(g.next(), 0);
    EXPECT_EQ(g.size_hint(), std::nullopt) << "a generator announces no length";
}

TEST(Stream, ElementFuturesFeedOtherItems) {
    auto h = streams("counting");
    auto square = load_own_gil_module("squares");
    auto s = h.stream<long>(buffered(16), length(10));
    auto fifth = s.element(5);
    auto beyond = s.element(20);
    auto squared = square.submit([](long x) { return x; }, cast_to<long>(), fifth);
    ASSERT_TRUE(completes(squared));
    EXPECT_EQ(squared.get(), 25);
    EXPECT_EQ(fifth.get(), 5);
    EXPECT_EQ(s.next(), 0) << "the element is still delivered to the reader";
    EXPECT_NE(what_of<std::invalid_argument>([&] { s.element(0); }).find("already read"), std::string::npos);
    while (s.next()) {
    }
    EXPECT_THROW(beyond.get(), std::out_of_range);
}

TEST(Stream, OwnGilHandlers) {
#if PY_VERSION_HEX < 0x030C0000
    GTEST_SKIP() << "own-GIL sub-interpreters need CPython 3.12+";
#else
    HandlerOptions o;
    o.interpreter = InterpreterKind::OwnGil;
    auto h = streams("counting", o);
    auto s = h.stream<long>(buffered(8), length(1000));
    long sum = 0;
    for (long x : s) sum += x;
    EXPECT_EQ(sum, 999L * 1000 / 2);
    o.workers = 2;
    auto pool = streams("counting", o);
    EXPECT_NE(what_of<std::invalid_argument>([&] { pool.stream<long>(length(1)); }).find("streams need one interpreter"),
              std::string::npos);
#endif
}

TEST(StreamStress, ReadersAbandonersAndCancelRace) {
    auto h = streams("counting");
    std::atomic<long> ended_normally{0}, cancelled{0}, wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 25; ++i) {
                auto s = h.stream<long>(buffered(1 + (i % 5)), length(50 * (i + t)));
                const long stop_at = (i % 3 == 0) ? 7 : -1;  // a third are abandoned early
                try {
                    long expected = 0;
                    while (auto x = s.next()) {
                        if (*x != expected++) ++wrong;
                        if (expected == stop_at) break;
                    }
                    ++ended_normally;
                } catch (const Cancelled&) {
                    ++cancelled;
                }
            }
        });
    }
    ASSERT_TRUE(eventually([&] { return ended_normally.load() + cancelled.load() >= 20; }));
    h.shutdown(ShutdownMode::Cancel);
    for (auto& th : threads) th.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(ended_normally.load() + cancelled.load(), 100);
}

}  // namespace
}  // namespace pyscheduler::test
