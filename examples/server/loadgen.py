"""Load test of examples/server: pyscheduler against a GIL-per-request handler and a
pure-Python server, same model, same machine, loopback only.

    python loadgen.py --server-binary build-Release/examples/pyscheduler_example_server \
        [--concurrency 1,4,16,64,256] [--seconds 3] [--rounds 3] [--out DIR]

(./configure.sh --deps --server-bench runs it.) Each round starts each server in turn
(rounds interleave the servers, so a slow spell of the machine hits all of them),
drives it at every concurrency for --seconds with that many keep-alive connections,
checks every answer against the model computed here, and stops it with SIGTERM.
Writes DIR/server_bench.csv (one row per round, server and concurrency) and
DIR/server_bench.png (throughput and p50/p99 latency against concurrency: medians
over the rounds, bars from the lowest to the highest round), and prints the ratios
at 64 clients. Exits 1 if any answer was wrong or any request got no answer.

The client is a minimal HTTP/1.1 client on asyncio streams, not aiohttp's: on a
2-core machine the client shares the cores with the server, and aiohttp's client
costs several times as much CPU per request, which would cap every server at the
client's rate.
"""
import argparse
import asyncio
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


# --- the client ---------------------------------------------------------------

class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host, port):
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, method, path, body=b""):
        """(status, headers with lower-case names, body)."""
        head = (f"{method} {path} HTTP/1.1\r\nHost: loadgen\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        return await self.read_response()

    async def read_response(self):
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def close(self):
        self.writer.close()


class Model:
    """The answers the servers must give: server_model, imported here."""

    def __init__(self, inputs=512):
        sys.path.insert(0, HERE)
        import server_model
        rows = server_model.SAMPLES[:inputs]
        self.bodies = [json.dumps({"features": row.tolist()}).encode() for row in rows]
        self.expected = server_model.MODEL.predict_proba(rows).tolist()

    def check(self, i, body):
        """None if `body` is the right answer to input i, else what is wrong."""
        try:
            answer = json.loads(body)
            got = answer["probabilities"]
            want = self.expected[i]
            if len(got) != len(want) or max(abs(a - b) for a, b in zip(got, want)) > 1e-6:
                return f"input {i}: probabilities {got}, expected {want}"
            best = max(range(len(want)), key=want.__getitem__)
            if answer["class"] != best:
                return f"input {i}: class {answer['class']}, expected {best}"
        except (ValueError, KeyError, TypeError) as e:
            return f"input {i}: unreadable answer {body[:200]!r} ({e})"
        return None


# --- servers ----------------------------------------------------------------------

class Server:
    """A server process started on a free loopback port; stop() sends SIGTERM."""

    def __init__(self, command):
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = []
        for line in self.process.stdout:
            self.output.append(line)
            m = re.search(r"listening on http://([\d.]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                return
        raise RuntimeError("the server exited before listening:\n" + "".join(self.output))

    def stop(self, timeout=60):
        """SIGTERM, then the exit status and the whole output."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout=60):
        """The exit status and the whole output, once the process has ended."""
        rest, _ = self.process.communicate(timeout=timeout)
        self.output.append(rest)
        return self.process.returncode, "".join(self.output)


def server_command(name, args):
    if name == "python":
        return [args.python, os.path.join(HERE, "python_server.py"), "--port", "0"]
    return [args.server_binary, "--mode", name, "--port", "0", *args.server_args.split()]


# --- one load level -------------------------------------------------------------

async def drive(host, port, model, concurrency, seconds):
    """`concurrency` connections, each sending back to back for `seconds`."""
    latencies, rejected, errors, wrong = [], 0, [], []
    start = time.perf_counter()
    end = start + seconds

    async def client(k):
        nonlocal rejected
        i = k
        try:
            conn = await Connection.open(host, port)
        except OSError as e:
            errors.append(f"connect: {e}")
            return
        try:
            while time.perf_counter() < end:
                index = i % len(model.bodies)
                i += concurrency
                t = time.perf_counter()
                status, headers, body = await conn.request("POST", "/predict", model.bodies[index])
                if status == 200:
                    latencies.append(time.perf_counter() - t)
                    problem = model.check(index, body)
                    if problem:
                        wrong.append(problem)
                elif status == 503 and "retry-after" in headers:
                    rejected += 1
                else:
                    errors.append(f"status {status}: {body[:200]!r}")
        except (OSError, asyncio.IncompleteReadError) as e:
            errors.append(f"connection lost: {e!r}")
        finally:
            conn.close()

    await asyncio.gather(*(client(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3 if latencies else float("nan")

    return {"ok": len(latencies), "rejected": rejected, "errors": len(errors), "wrong": len(wrong),
            "seconds": elapsed, "throughput": len(latencies) / elapsed, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "problems": (wrong + errors)[:5]}


# --- the comparison -------------------------------------------------------------

def summarize(rows, servers, levels):
    def median(server, c, key):
        values = [r[key] for r in rows if r["server"] == server and r["concurrency"] == c]
        return statistics.median(values), min(values), max(values)

    print(f"\n{'server':<12} {'clients':>7} {'req/s (median, min-max)':>28} {'p50 ms':>8} {'p99 ms':>8}")
    for s in servers:
        for c in levels:
            t, lo, hi = median(s, c, "throughput")
            print(f"{s:<12} {c:>7} {t:>12.0f} ({lo:>6.0f}-{hi:<6.0f}) {median(s, c, 'p50_ms')[0]:>8.2f} "
                  f"{median(s, c, 'p99_ms')[0]:>8.2f}")
    if "pyscheduler" in servers and 64 in levels:
        rounds = sorted({r["round"] for r in rows})
        for other in [s for s in servers if s != "pyscheduler"]:
            ratios, p99 = [], []
            for k in rounds:
                a = next(r for r in rows if r["round"] == k and r["server"] == "pyscheduler" and r["concurrency"] == 64)
                b = next(r for r in rows if r["round"] == k and r["server"] == other and r["concurrency"] == 64)
                ratios.append(a["throughput"] / b["throughput"])
                p99.append(a["p99_ms"] / b["p99_ms"])
            print(f"at 64 clients, pyscheduler / {other}: throughput "
                  + ", ".join(f"{x:.2f}x" for x in ratios) + "; p99 latency " + ", ".join(f"{x:.2f}x" for x in p99))


def plot(rows, servers, levels, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in servers:
        def series(key):
            mid, lo, hi = [], [], []
            for c in levels:
                v = [r[key] for r in rows if r["server"] == s and r["concurrency"] == c]
                mid.append(statistics.median(v))
                lo.append(mid[-1] - min(v))
                hi.append(max(v) - mid[-1])
            return mid, [lo, hi]

        mid, spread = series("throughput")
        line = left.errorbar(levels, mid, yerr=spread, marker="o", capsize=3, label=s)
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            mid, spread = series(key)
            right.errorbar(levels, mid, yerr=spread, marker="o", linestyle=style, capsize=3,
                           color=line.lines[0].get_color(), label=f"{s} {key[:3]}")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="requests/s", title="Throughput")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="Latency (p50 solid, p99 dashed)")
    for ax in (left, right):
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("examples/server: MLP classifier over HTTP, loopback, "
                 f"{os.cpu_count()} CPUs (medians of the rounds; bars: min to max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-binary", required=True, help="pyscheduler_example_server")
    parser.add_argument("--python", default=sys.executable, help="interpreter for python_server.py")
    parser.add_argument("--servers", default="pyscheduler,gil,python")
    parser.add_argument("--server-args", default="", help="more options for pyscheduler_example_server")
    parser.add_argument("--concurrency", default="1,4,16,64,256")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    servers = args.servers.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    model = Model()
    rows, failures = [], []
    for k in range(1, args.rounds + 1):
        for name in servers:
            server = Server(server_command(name, args))
            asyncio.run(drive(server.host, server.port, model, 16, 0.5))  # warm-up, not recorded
            for c in levels:
                r = asyncio.run(drive(server.host, server.port, model, c, args.seconds))
                print(f"round {k} {name:<12} {c:>4} clients: {r['throughput']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                      f"p99 {r['p99_ms']:7.2f} ms  503s {r['rejected']}  errors {r['errors']}  wrong {r['wrong']}",
                      flush=True)
                if r["wrong"] or r["errors"]:
                    failures.append(f"round {k} {name} at {c}: " + "; ".join(r["problems"]))
                rows.append({"round": k, "server": name, "concurrency": c,
                             **{key: v for key, v in r.items() if key != "problems"}})
            status, output = server.stop()
            if status != 0:
                failures.append(f"{name} exited with status {status}:\n{output}")
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "server_bench.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    png_path = os.path.join(args.out, "server_bench.png")
    plot(rows, servers, levels, png_path)
    summarize(rows, servers, levels)
    print(f"\nwrote {csv_path} and {png_path}")
    if failures:
        print("FAILED:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
