// pyscheduler/metrics.hpp - handler statistics in the Prometheus text exposition
// format (version 0.0.4), for a service's GET /metrics.
//
//   pyscheduler::MetricsText m;
//   m.add(score_handler).add(embed_handler);                     // pyscheduler_* families
//   m.counter("myservice_requests_total", "HTTP requests", n, {{"code", "200"}});
//   response.set_content(m.str(), pyscheduler::MetricsText::content_type);
//
// Samples of one family are written together under one HELP and TYPE line however
// the calls interleave, so several handlers (labelled handler="module.function")
// and the service's own metrics share one text. No dependency beyond the standard
// library; nothing here touches Python.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pyscheduler/stats.hpp"

namespace pyscheduler {

class MetricsText {
public:
    using Labels = std::vector<std::pair<std::string, std::string>>;

    /// The Content-Type a scraper expects for str().
    static constexpr const char* content_type = "text/plain; version=0.0.4; charset=utf-8";

    /// A sample of a counter family (name should end in _total). Names follow
    /// Prometheus' rules ([a-zA-Z_:][a-zA-Z0-9_:]*, labels [a-zA-Z_][a-zA-Z0-9_]*):
    /// anything else, or a name reused with another type, is std::invalid_argument.
    MetricsText& counter(std::string_view name, std::string_view help, double value, const Labels& labels = {}) {
        family(name, "counter", help).samples += sample(name, "", labels, value);
        return *this;
    }

    MetricsText& gauge(std::string_view name, std::string_view help, double value, const Labels& labels = {}) {
        family(name, "gauge", help).samples += sample(name, "", labels, value);
        return *this;
    }

    /// The _bucket (one per bound, then +Inf), _sum and _count samples of `h`.
    MetricsText& histogram(std::string_view name, std::string_view help, const HistogramSnapshot& h,
                           const Labels& labels = {}) {
        if (h.cumulative.size() != h.bounds.size()) {
            throw std::invalid_argument("pyscheduler::MetricsText: histogram '" + std::string(name) + "' has " +
                                        std::to_string(h.bounds.size()) + " bounds but " +
                                        std::to_string(h.cumulative.size()) + " bucket counts");
        }
        std::string& out = family(name, "histogram", help).samples;
        Labels with_le = labels;
        with_le.emplace_back("le", "");
        for (std::size_t i = 0; i <= h.bounds.size(); ++i) {
            with_le.back().second = i < h.bounds.size() ? number(h.bounds[i]) : "+Inf";
            out += sample(name, "_bucket", with_le, static_cast<double>(i < h.bounds.size() ? h.cumulative[i] : h.count));
        }
        out += sample(name, "_sum", labels, h.sum);
        out += sample(name, "_count", labels, static_cast<double>(h.count));
        return *this;
    }

    /// Every figure of `stats` as pyscheduler_* families, labelled handler=`handler`
    /// (workers also worker="i"). The histograms that are empty (statistics disabled
    /// by the policy, measure_latency off) are left out.
    MetricsText& add(std::string_view handler, const QueueStats& s) {
        const Labels h{{"handler", std::string(handler)}};
        counter("pyscheduler_items_queued_total", "Items queued (a dependent item once its inputs are in).",
                static_cast<double>(s.total_enqueued), h);
        counter("pyscheduler_items_completed_total", "Items whose future was fulfilled with a value.",
                static_cast<double>(s.completed), h);
        counter("pyscheduler_items_failed_total", "Items whose future was fulfilled with an exception.",
                static_cast<double>(s.failed), h);
        counter("pyscheduler_items_timed_out_total", "Failed items whose deadline passed before they ran.",
                static_cast<double>(s.timed_out), h);
        const char* stage_help = "Items in the handler by stage: waiting for inputs, queued, committed.";
        gauge("pyscheduler_items_in_stage", stage_help, static_cast<double>(s.waiting), with(h, "stage", "waiting"));
        gauge("pyscheduler_items_in_stage", stage_help, static_cast<double>(s.commit_queue_size),
              with(h, "stage", "queued"));
        gauge("pyscheduler_items_in_stage", stage_help, static_cast<double>(s.execute_queue_size),
              with(h, "stage", "committed"));
        for (std::size_t i = 0; i < s.workers.size(); ++i) {
            const Labels w = with(h, "worker", std::to_string(i));
            counter("pyscheduler_worker_batches_total", "Python calls made by the worker.",
                    static_cast<double>(s.workers[i].batches), w);
            counter("pyscheduler_worker_items_total", "Items the worker finished.",
                    static_cast<double>(s.workers[i].items), w);
            counter("pyscheduler_worker_busy_seconds_total", "Wall time the worker spent in batches.",
                    static_cast<double>(s.workers[i].busy_ns) * 1e-9, w);
        }
        histogram("pyscheduler_batch_size", "Items per Python call.", s.batch_sizes, h);
        if (!s.batch_seconds.bounds.empty()) {
            histogram("pyscheduler_batch_duration_seconds", "Wall time of one batch, GIL wait included.",
                      s.batch_seconds, h);
        }
        if (!s.item_seconds.bounds.empty()) {
            histogram("pyscheduler_item_latency_seconds", "From queue_invoke to the end of the item's batch.",
                      s.item_seconds, h);
        }
        return *this;
    }

    /// A handler (anything with name(), get_queue_stats() and is_paused()): its
    /// statistics, plus pyscheduler_paused.
    template <class Handler>
    MetricsText& add(const Handler& handler) {
        const std::string name = handler.name();
        gauge("pyscheduler_paused", "1 while the handler is paused.", handler.is_paused() ? 1 : 0,
              {{"handler", name}});
        return add(name, handler.get_queue_stats());
    }

    /// The exposition: each family's HELP, TYPE and samples, in the order the families
    /// first appeared.
    std::string str() const {
        std::string out;
        for (const Family& f : families_) {
            out += "# HELP " + f.name + ' ' + escape(f.help, false) + '\n';
            out += "# TYPE " + f.name + ' ' + f.type + '\n';
            out += f.samples;
        }
        return out;
    }

private:
    struct Family {
        std::string name, type, help, samples;
    };

    Family& family(std::string_view name, const char* type, std::string_view help) {
        for (Family& f : families_) {
            if (f.name != name) continue;
            if (f.type != type) {
                throw std::invalid_argument("pyscheduler::MetricsText: '" + f.name + "' is a " + f.type +
                                            ", not a " + type);
            }
            return f;
        }
        check_name(name, true);
        return families_.emplace_back(Family{std::string(name), type, std::string(help), {}});
    }

    static void check_name(std::string_view name, bool metric) {
        const auto ok = [metric](char c, bool first) {
            return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (metric && c == ':') ||
                   (!first && c >= '0' && c <= '9');
        };
        bool good = !name.empty();
        for (std::size_t i = 0; good && i < name.size(); ++i) good = ok(name[i], i == 0);
        if (!good) {
            throw std::invalid_argument(std::string("pyscheduler::MetricsText: '") + std::string(name) +
                                        "' is not a valid Prometheus " + (metric ? "metric" : "label") + " name");
        }
    }

    static Labels with(Labels labels, std::string name, std::string value) {
        labels.emplace_back(std::move(name), std::move(value));
        return labels;
    }

    static std::string sample(std::string_view name, std::string_view suffix, const Labels& labels, double value) {
        std::string out(name);
        out += suffix;
        if (!labels.empty()) {
            out += '{';
            for (std::size_t i = 0; i < labels.size(); ++i) {
                check_name(labels[i].first, false);
                if (i > 0) out += ',';
                out += labels[i].first + "=\"" + escape(labels[i].second, true) + '"';
            }
            out += '}';
        }
        out += ' ' + number(value) + '\n';
        return out;
    }

    /// Backslash and newline always; the double quote in label values.
    static std::string escape(std::string_view text, bool quotes) {
        std::string out;
        out.reserve(text.size());
        for (char c : text) {
            if (c == '\\') {
                out += "\\\\";
            } else if (c == '\n') {
                out += "\\n";
            } else if (c == '"' && quotes) {
                out += "\\\"";
            } else {
                out += c;
            }
        }
        return out;
    }

    /// Shortest text that reads back as the same double; +Inf, -Inf, NaN as Prometheus spells them.
    static std::string number(double v) {
        if (std::isnan(v)) return "NaN";
        if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
        char buffer[32];
        const auto r = std::to_chars(buffer, buffer + sizeof buffer, v);
        return std::string(buffer, r.ptr);
    }

    std::vector<Family> families_;
};

}  // namespace pyscheduler
