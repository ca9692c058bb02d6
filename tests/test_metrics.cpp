// Histograms in QueueStats and their Prometheus exposition (metrics.hpp): bucket
// placement, bad bounds and names, families grouped across handlers, escaping, and
// the handler's batch-size and item-latency histograms counting what really ran.
// examples/server's smoke test parses a live /metrics with prometheus_client.
#include <pyscheduler/metrics.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace pyscheduler::test {
namespace {

std::size_t occurrences(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

TEST(Metrics, HistogramPutsEachValueInTheFirstBucketAtOrAboveIt) {
    Histogram h({1, 2, 4});
    for (double v : {0.5, 1.0, 1.5, 4.0, 4.5, 100.0}) h.observe(v);
    const HistogramSnapshot s = h.snapshot();
    EXPECT_EQ(s.bounds, (std::vector<double>{1, 2, 4}));
    EXPECT_EQ(s.cumulative, (std::vector<std::uint64_t>{2, 3, 4}));  // <=1: 0.5, 1; <=2: 1.5; <=4: 4
    EXPECT_EQ(s.count, 6u);
    EXPECT_DOUBLE_EQ(s.sum, 111.5);
}

TEST(Metrics, HistogramRefusesBoundsThatAreNotIncreasingOrNotFinite) {
    EXPECT_NE(what_of<std::invalid_argument>([] { (void)Histogram({1, 1}); }).find("bound 1"), std::string::npos);
    EXPECT_THROW((void)Histogram({1, INFINITY}), std::invalid_argument);
    EXPECT_THROW((void)Histogram::exponential(0, 2, 3), std::invalid_argument);
    EXPECT_EQ(Histogram::exponential(1, 10, 3), (std::vector<double>{1, 10, 100}));
    const auto latency = Histogram::latency_seconds();
    EXPECT_DOUBLE_EQ(latency.front(), 1e-5);
    EXPECT_DOUBLE_EQ(latency.back(), 10);
}

TEST(Metrics, ObservationsFromManyThreadsAllCount) {
    Histogram h(Histogram::latency_seconds());
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&h] {
            for (int i = 0; i < 20000; ++i) h.observe(1e-3);
        });
    }
    for (auto& t : threads) t.join();
    const auto s = h.snapshot();
    EXPECT_EQ(s.count, 80000u);
    EXPECT_NEAR(s.sum, 80.0, 1e-6);
}

TEST(Metrics, FamiliesAreWrittenTogetherWithEscapedLabels) {
    MetricsText m;
    m.counter("app_requests_total", "Requests.", 3, {{"code", "200"}});
    m.gauge("app_up", "Up.", 1);
    m.counter("app_requests_total", "Requests.", 1, {{"code", "a\"b\\c\nd"}});
    Histogram h({0.5});
    h.observe(0.25);
    h.observe(2);
    m.histogram("app_seconds", "Line one\nline two.", h.snapshot(), {{"x", "y"}});
    EXPECT_EQ(m.str(),
              "# HELP app_requests_total Requests.\n"
              "# TYPE app_requests_total counter\n"
              "app_requests_total{code=\"200\"} 3\n"
              "app_requests_total{code=\"a\\\"b\\\\c\\nd\"} 1\n"
              "# HELP app_up Up.\n"
              "# TYPE app_up gauge\n"
              "app_up 1\n"
              "# HELP app_seconds Line one\\nline two.\n"
              "# TYPE app_seconds histogram\n"
              "app_seconds_bucket{x=\"y\",le=\"0.5\"} 1\n"
              "app_seconds_bucket{x=\"y\",le=\"+Inf\"} 2\n"
              "app_seconds_sum{x=\"y\"} 2.25\n"
              "app_seconds_count{x=\"y\"} 2\n");
}

TEST(Metrics, BadNamesAndTypeClashesAreRefused) {
    MetricsText m;
    EXPECT_NE(what_of<std::invalid_argument>([&] { m.counter("2xx_total", "", 1); }).find("'2xx_total'"),
              std::string::npos);
    EXPECT_NE(what_of<std::invalid_argument>([&] { m.gauge("ok", "", 1, {{"bad-label", "v"}}); }).find("label"),
              std::string::npos);
    m.gauge("app_value", "", 1);
    EXPECT_NE(what_of<std::invalid_argument>([&] { m.counter("app_value", "", 1); }).find("is a gauge"),
              std::string::npos);
}

TEST(Metrics, HandlersCountTheirBatchesAndItemLatencies) {
    HandlerOptions options;
    options.batch_size = 8;
    options.measure_latency = true;
    auto measured = load("identity", options);
    auto plain = load("double", 4);
    std::vector<std::future<int>> futures;
    for (int i = 0; i < 100; ++i) {
        futures.push_back(measured.queue_invoke([](int v) { return v; }, cast_to<int>(), i));
    }
    EXPECT_EQ(plain.queue_invoke([](int v) { return v; }, cast_to<int>(), 7).get(), 14);
    for (auto& f : futures) f.get();

    const QueueStats s = measured.get_queue_stats();
    EXPECT_EQ(s.batch_sizes.bounds, (std::vector<double>{1, 2, 4, 8}));
    EXPECT_EQ(s.batch_sizes.count, s.workers[0].batches);
    EXPECT_DOUBLE_EQ(s.batch_sizes.sum, 100.0);               // every item in some batch
    EXPECT_EQ(s.batch_sizes.cumulative.back(), s.batch_sizes.count);  // none above batch_size
    EXPECT_EQ(s.batch_seconds.count, s.workers[0].batches);
    EXPECT_EQ(s.item_seconds.count, 100u);
    EXPECT_GT(s.item_seconds.sum, 0.0);
    EXPECT_TRUE(plain.get_queue_stats().item_seconds.bounds.empty());  // measure_latency off

    MetricsText m;
    m.add(measured).add(plain);
    const std::string text = m.str();
    EXPECT_EQ(occurrences(text, "# TYPE pyscheduler_items_completed_total counter"), 1u);
    EXPECT_NE(text.find("pyscheduler_items_completed_total{handler=\"pyscheduler_test_funcs.identity\"} 100"),
              std::string::npos);
    EXPECT_NE(text.find("pyscheduler_items_completed_total{handler=\"pyscheduler_test_funcs.double\"} 1\n"),
              std::string::npos);
    EXPECT_NE(text.find("pyscheduler_item_latency_seconds_count{handler=\"pyscheduler_test_funcs.identity\"} 100"),
              std::string::npos);
    EXPECT_EQ(occurrences(text, "pyscheduler_item_latency_seconds_count"), 1u);  // the plain handler has none
    EXPECT_NE(text.find("pyscheduler_worker_batches_total{handler=\"pyscheduler_test_funcs.identity\",worker=\"0\"}"),
              std::string::npos);
    EXPECT_NE(text.find("pyscheduler_paused{handler=\"pyscheduler_test_funcs.identity\"} 0"), std::string::npos);
}

}  // namespace
}  // namespace pyscheduler::test
