// An HTTP inference server: a scikit-learn model (server_model.py) served to many
// clients through pyscheduler, with Prometheus metrics and a graceful shutdown.
//
//   ./configure.sh --deps --mode Release --run server         (port 8000; Ctrl-C stops it)
//   curl -s localhost:8000/predict -d '{"features": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}'
//   curl -s localhost:8000/metrics
//
// POST /predict  {"features": [16 numbers]} -> {"class": k, "probabilities": [4 numbers]}
//                400 bad input (the message says what), 503 + Retry-After queue full or
//                shutting down, 504 deadline passed before the model ran, 500 model error
// GET  /metrics  Prometheus text: the handler's pyscheduler_* families and the server's
//                requests by code and latency
// GET  /healthz  "ok" (503 "draining" once SIGTERM/SIGINT arrived)
//
// --mode pyscheduler (default): each HTTP thread parses its request in C++, queues it
// (try_queue_invoke: a full bounded queue answers 503 at once) and waits on the future
// without the GIL; the executor runs up to --batch requests in one predict call.
// --mode gil: what services write without pyscheduler: each HTTP thread takes the GIL
// (pybind11::gil_scoped_acquire) and calls predict_one for its own request.
//
// SIGTERM or SIGINT: /healthz turns 503, the handler drains (queued requests run at
// once, later ones get 503), the listener closes once the requests being served are
// answered, and the process exits 0 after printing its counts. examples/server/loadgen.py compares both modes and a
// pure-Python server (python_server.py) under load: ./configure.sh --deps --server-bench.
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <pybind11/stl.h>
#include <pyscheduler/pyscheduler.hpp>

#include <array>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kFeatures = 16;

struct Config {
    std::string mode = "pyscheduler";
    std::string host = "127.0.0.1";
    int port = 8000;  // 0: any free port (printed)
    int threads = 256;
    std::size_t batch = 64;
    long batch_delay_us = 0;  // opportunistic: a batch is what arrived while the last one ran
    std::size_t queue = 1024;
    long deadline_ms = 2000;
};

[[noreturn]] void usage(const char* problem) {
    std::fprintf(stderr,
                 "%s%sUsage: pyscheduler_example_server [--mode pyscheduler|gil] [--host H] [--port N (0: any)]\n"
                 "       [--threads N] [--batch N] [--batch-delay-us N] [--queue N] [--deadline-ms N]\n",
                 problem, *problem ? "\n" : "");
    std::exit(*problem ? 2 : 0);
}

Config parse(int argc, char** argv) {
    Config c;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") usage("");
        if (i + 1 >= argc) usage(("error: " + flag + " needs a value").c_str());
        const std::string value = argv[++i];
        auto number = [&](long low) {
            char* end = nullptr;
            const long v = std::strtol(value.c_str(), &end, 10);
            if (value.empty() || *end != '\0' || v < low) {
                usage(("error: " + flag + " needs an integer >= " + std::to_string(low) + ", not '" + value + "'")
                          .c_str());
            }
            return v;
        };
        if (flag == "--mode") {
            if (value != "pyscheduler" && value != "gil") usage(("error: unknown mode '" + value + "'").c_str());
            c.mode = value;
        } else if (flag == "--host") {
            c.host = value;
        } else if (flag == "--port") {
            c.port = static_cast<int>(number(0));
        } else if (flag == "--threads") {
            c.threads = static_cast<int>(number(1));
        } else if (flag == "--batch") {
            c.batch = static_cast<std::size_t>(number(1));
        } else if (flag == "--batch-delay-us") {
            c.batch_delay_us = number(0);
        } else if (flag == "--queue") {
            c.queue = static_cast<std::size_t>(number(1));
        } else if (flag == "--deadline-ms") {
            c.deadline_ms = number(1);
        } else {
            usage(("error: unknown option '" + flag + "'").c_str());
        }
    }
    return c;
}

/// {"features": [16 numbers]}, or the reason it is not.
std::optional<std::vector<double>> parse_features(const std::string& body, std::string& error) {
    const json request = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (request.is_discarded()) {
        error = "the body is not valid JSON";
        return std::nullopt;
    }
    if (!request.is_object() || !request.contains("features")) {
        error = "expected an object with a \"features\" member";
        return std::nullopt;
    }
    const json& features = request["features"];
    if (!features.is_array() || features.size() != kFeatures) {
        error = "\"features\" must be an array of " + std::to_string(kFeatures) + " numbers";
        return std::nullopt;
    }
    std::vector<double> x;
    x.reserve(kFeatures);
    for (std::size_t i = 0; i < kFeatures; ++i) {
        if (!features[i].is_number()) {
            error = "\"features\"[" + std::to_string(i) + "] is not a number";
            return std::nullopt;
        }
        x.push_back(features[i].get<double>());
    }
    return x;
}

std::string answer(const std::vector<double>& probabilities) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < probabilities.size(); ++i) {
        if (probabilities[i] > probabilities[best]) best = i;
    }
    return json{{"class", best}, {"probabilities", probabilities}}.dump();
}

void reply_error(httplib::Response& res, int status, const std::string& message) {
    res.status = status;
    res.set_content(json{{"error", message}}.dump(), "application/json");
}

/// The server's own metrics: responses by status code and request latency.
class RequestMetrics {
public:
    void record(int status, Clock::time_point start) {
        latency_.observe(std::chrono::duration<double>(Clock::now() - start).count());
        std::lock_guard<std::mutex> lock(mutex_);
        ++by_code_[status];
    }
    std::uint64_t count(int status) const {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = by_code_.find(status);
        return it == by_code_.end() ? 0 : it->second;
    }
    void add_to(pyscheduler::MetricsText& m, const std::string& mode) const {
        std::lock_guard<std::mutex> lock(mutex_);
        for (const auto& [code, n] : by_code_) {
            m.counter("server_requests_total", "POST /predict responses by status code.", static_cast<double>(n),
                      {{"mode", mode}, {"code", std::to_string(code)}});
        }
        m.histogram("server_request_seconds", "POST /predict latency inside the server.", latency_.snapshot(),
                    {{"mode", mode}});
    }

private:
    mutable std::mutex mutex_;
    std::map<int, std::uint64_t> by_code_;
    pyscheduler::Histogram latency_{pyscheduler::Histogram::latency_seconds()};
};

}  // namespace

int main(int argc, char** argv) {
    const Config config = parse(argc, argv);

    // SIGTERM/SIGINT go to one thread that waits for them (blocked everywhere else:
    // every thread made from here on inherits the mask).
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    pyscheduler::PyManager python;
    python.add_path(PYSCHEDULER_EXAMPLE_DIR);
    pyscheduler::HandlerOptions options;
    options.batch_size = config.batch;
    options.prefetch_depth = 2;
    options.max_batch_delay = std::chrono::microseconds(config.batch_delay_us);
    options.queue_capacity = config.queue;
    options.measure_latency = true;
    // Training happens at import, before the port opens: /healthz is "ok" once listening.
    auto model = python.loadPythonModule("server_model", "predict", options);
    std::optional<pyscheduler::GilSafe<py::object>> predict_one;  // --mode gil
    if (config.mode == "gil") {
        py::gil_scoped_acquire gil;
        predict_one.emplace(py::module_::import("server_model").attr("predict_one"));
    }

    RequestMetrics metrics;
    std::atomic<bool> draining{false};
    httplib::Server server;
    server.new_task_queue = [n = config.threads] { return new httplib::ThreadPool(static_cast<std::size_t>(n)); };
    server.set_keep_alive_max_count(1000000);
    server.set_keep_alive_timeout(30);
    server.set_tcp_nodelay(true);  // httplib writes headers and body apart: Nagle would hold the body
                                   // for the client's delayed ACK (40 ms per request)

    server.Post("/predict", [&](const httplib::Request& req, httplib::Response& res) {
        const auto start = Clock::now();
        res.status = 200;  // httplib fills it in only after the handler returns
        std::string error;
        auto features = parse_features(req.body, error);
        if (!features) {
            reply_error(res, 400, error);
        } else if (predict_one) {
            std::vector<double> probabilities;
            try {
                py::gil_scoped_acquire gil;
                probabilities = predict_one->get()(*features).cast<std::vector<double>>();
            } catch (const std::exception& e) {
                error = e.what();
            }
            if (error.empty()) {
                res.set_content(answer(probabilities), "application/json");
            } else {
                reply_error(res, 500, error);
            }
        } else {
            pyscheduler::ItemOptions item;
            item.deadline = start + std::chrono::milliseconds(config.deadline_ms);
            auto future = model.try_queue_invoke(
                item, [](std::vector<double> x) { return x; },
                [](py::object r) { return r.cast<std::vector<double>>(); }, std::move(*features));
            if (!future) {
                res.set_header("Retry-After", "1");
                reply_error(res, 503, "the queue is full");
            } else {
                try {
                    res.set_content(answer(future->get()), "application/json");
                } catch (const pyscheduler::Timeout& e) {
                    reply_error(res, 504, e.what());
                } catch (const pyscheduler::Cancelled& e) {
                    res.set_header("Retry-After", "1");
                    reply_error(res, 503, e.what());
                } catch (const std::exception& e) {
                    reply_error(res, 500, e.what());
                }
            }
        }
        metrics.record(res.status, start);
    });
    server.Get("/healthz", [&](const httplib::Request&, httplib::Response& res) {
        if (draining.load()) res.status = 503;
        res.set_content(draining.load() ? "draining\n" : "ok\n", "text/plain");
    });
    server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
        pyscheduler::MetricsText m;
        m.add(model);
        metrics.add_to(m, config.mode);
        res.set_content(m.str(), pyscheduler::MetricsText::content_type);
    });

    // httplib 0.11 listens with a backlog of 5: a burst of new connections overflows it
    // (the kernel drops the SYNs, clients retry after 1, 3, 7 s). Keep the listening
    // socket to raise the backlog once httplib has bound it.
    int listener = -1;
    server.set_socket_options([&listener](socket_t sock) {
        int yes = 1;
        setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
        listener = sock;
    });
    const int port = config.port == 0 ? server.bind_to_any_port(config.host)
                                      : (server.bind_to_port(config.host, config.port) ? config.port : -1);
    if (port < 0) {
        std::fprintf(stderr, "server: cannot listen on %s:%d\n", config.host.c_str(), config.port);
        return 1;
    }
    if (listener >= 0) ::listen(listener, SOMAXCONN);  // Linux updates the backlog of a listening socket
    std::thread stopper([&] {
        int signal = 0;
        sigwait(&stop_signals, &signal);
        draining.store(true);
        std::printf("server: %s, draining\n", signal == SIGTERM ? "SIGTERM" : "SIGINT");
        std::fflush(stdout);
        // Queued requests run now (a batch waiting to fill runs at once); requests that
        // arrive from here on get Cancelled, answered 503 + Retry-After.
        model.shutdown(pyscheduler::ShutdownMode::Drain);
        server.stop();
    });
    std::printf("server: listening on http://%s:%d (mode %s, batch %zu, queue %zu)\n", config.host.c_str(), port,
                config.mode.c_str(), config.batch, config.queue);
    std::fflush(stdout);
    // Returns after stop(), once the requests being served are answered.
    if (!server.listen_after_bind() && !draining.load()) std::fprintf(stderr, "server: the listener failed\n");
    if (!draining.load()) kill(getpid(), SIGTERM);  // ends the stopper's wait
    stopper.join();
    const auto stats = model.get_queue_stats();
    std::printf("server: stopped; answered 200: %llu, 400: %llu, 503: %llu, 504: %llu, 500: %llu; "
                "model items %llu in %llu batches\n",
                static_cast<unsigned long long>(metrics.count(200)), static_cast<unsigned long long>(metrics.count(400)),
                static_cast<unsigned long long>(metrics.count(503)), static_cast<unsigned long long>(metrics.count(504)),
                static_cast<unsigned long long>(metrics.count(500)), static_cast<unsigned long long>(stats.completed),
                static_cast<unsigned long long>(stats.batch_sizes.count));
    return 0;
}
