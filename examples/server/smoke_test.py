"""ctest example.server.smoke: examples/server end to end, on ephemeral loopback ports.

    python smoke_test.py path/to/pyscheduler_example_server [--quick]

1. 200 requests at once, each on its own connection: every answer is the model's.
2. Bad input gets 400 with a message naming what is wrong; /healthz answers.
3. /metrics parses with prometheus_client's own parser and counts what was served.
4. SIGTERM: the server exits 0 and reports the same counts.
5. Overload (queue of 4): every request gets either the right answer or 503 with
   Retry-After; none is lost or answered wrongly.
6. Drain: 20 requests held in the handler (a 30 s batch delay, batch 64), then
   SIGTERM: all 20 are answered correctly before the server exits.
7. --mode gil (a handler that takes the GIL per request) answers correctly too.

--quick (the sanitizer builds, where each server start costs a minute): 1 to 4 only.
"""
import asyncio
import json
import os
import signal
import sys
import time

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadgen import Connection, Model, Server  # noqa: E402

BINARY = sys.argv[1]
QUICK = sys.argv[2:] == ["--quick"]
MODEL = Model(inputs=256)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


async def one(host, port, method, path, body=b""):
    conn = await Connection.open(host, port)
    try:
        return await conn.request(method, path, body)
    finally:
        conn.close()


async def burst(server, n, offset=0):
    """n requests at once, one connection each: [(input index, status, headers, body)]."""
    async def send(i):
        index = (offset + i) % len(MODEL.bodies)
        status, headers, body = await one(server.host, server.port, "POST", "/predict", MODEL.bodies[index])
        return index, status, headers, body
    return await asyncio.gather(*(send(i) for i in range(n)))


def check_all_right(results, what):
    for index, status, _, body in results:
        expect(status == 200, f"{what}: input {index} got status {status}: {body[:200]!r}")
        problem = MODEL.check(index, body)
        expect(problem is None, f"{what}: {problem}")


def metrics_of(server):
    status, _, body = asyncio.run(one(server.host, server.port, "GET", "/metrics"))
    expect(status == 200, f"/metrics: status {status}")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def sample(samples, name, **labels):
    key = (name, tuple(sorted(labels.items())))
    expect(key in samples, f"/metrics has no {name}{labels}")
    return samples[key]


def stop(server, what):
    status, output = server.stop()
    expect(status == 0, f"{what}: exit status {status}:\n{output}")
    return output


def main():
    handler = "server_model.predict"

    server = Server([BINARY, "--port", "0"])
    check_all_right(asyncio.run(burst(server, 200)), "200 at once")
    bad = {b"{not json": "not valid JSON", b'{"features": [1, 2]}': "array of 16 numbers",
           b'{"features": [0, 1, 2, "x", 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]}': '"features"[3] is not a number'}
    for body, message in bad.items():
        status, _, answer = asyncio.run(one(server.host, server.port, "POST", "/predict", body))
        expect(status == 400 and message in json.loads(answer)["error"], f"{body!r}: {status} {answer!r}")
    status, _, answer = asyncio.run(one(server.host, server.port, "GET", "/healthz"))
    expect(status == 200 and answer == b"ok\n", f"/healthz: {status} {answer!r}")

    m = metrics_of(server)
    expect(sample(m, "pyscheduler_items_completed_total", handler=handler) == 200, "items completed")
    expect(sample(m, "pyscheduler_item_latency_seconds_count", handler=handler) == 200, "item latencies")
    batches = sample(m, "pyscheduler_batch_size_count", handler=handler)
    expect(sample(m, "pyscheduler_batch_size_sum", handler=handler) == 200, "items in batches")
    expect(sample(m, "pyscheduler_batch_size_bucket", handler=handler, le="+Inf") == batches, "+Inf bucket")
    expect(sample(m, "server_requests_total", mode="pyscheduler", code="200") == 200, "200s counted")
    expect(sample(m, "server_requests_total", mode="pyscheduler", code="400") == 3, "400s counted")
    expect(sample(m, "server_request_seconds_count", mode="pyscheduler") == 203, "request latencies")
    output = stop(server, "SIGTERM")
    expect("answered 200: 200, 400: 3" in output, f"final counts:\n{output}")
    print(f"200 at once: all right, in {batches:.0f} batches; metrics parsed; SIGTERM exit 0")
    if QUICK:
        print("server smoke test (quick): passed")
        return

    server = Server([BINARY, "--port", "0", "--queue", "4", "--batch", "4", "--batch-delay-us", "0"])
    results = asyncio.run(burst(server, 200))
    statuses = [s for _, s, _, _ in results]
    expect(all(s in (200, 503) for s in statuses), f"overload: statuses {sorted(set(statuses))}")
    expect(all("retry-after" in h for _, s, h, _ in results if s == 503), "503 without Retry-After")
    check_all_right([r for r in results if r[1] == 200], "overload")
    output = stop(server, "overload")
    print(f"overload: {statuses.count(200)} right answers, {statuses.count(503)} 503 + Retry-After, none lost")

    server = Server([BINARY, "--port", "0", "--batch", "64", "--batch-delay-us", "30000000"])
    async def drain():
        requests = asyncio.ensure_future(burst(server, 20, offset=100))
        deadline = time.monotonic() + 60
        while True:  # until all 20 are in the handler, waiting for the batch to fill
            status, _, body = await one(server.host, server.port, "GET", "/metrics")
            queued = [line for line in body.decode().splitlines()
                      if line.startswith("pyscheduler_items_queued_total")]
            if queued and float(queued[0].split()[-1]) == 20:
                break
            expect(time.monotonic() < deadline, "the 20 requests never reached the handler")
            await asyncio.sleep(0.01)
        expect(not requests.done(), "answered before the batch delay: the drain proves nothing")
        server.process.send_signal(signal.SIGTERM)
        return await requests

    start = time.monotonic()
    check_all_right(asyncio.run(drain()), "drain")
    status, output = server.wait()
    expect(status == 0 and "answered 200: 20," in output, f"drain: exit {status}:\n{output}")
    print(f"drain: 20 held requests answered after SIGTERM, exit 0 ({time.monotonic() - start:.2f} s)")

    server = Server([BINARY, "--port", "0", "--mode", "gil"])
    check_all_right(asyncio.run(burst(server, 50)), "gil mode")
    stop(server, "gil mode")
    print("gil mode: 50 at once, all right")
    print("server smoke test: passed")


if __name__ == "__main__":
    main()
