"""The pure-Python server examples/server is compared with: aiohttp, one event loop,
the same model (server_model.predict_one per request), the same routes and answers.

    python python_server.py [--host H] [--port N (0: any free port)]

Prints "server: listening on http://H:PORT (mode python)" once it accepts connections;
SIGTERM/SIGINT stop it after the requests being served.
"""
import argparse
import math
import socket
import sys

from aiohttp import web

import server_model


def bad_request(message):
    return web.json_response({"error": message}, status=400)


async def predict(request):
    try:
        body = await request.json()
    except ValueError:
        return bad_request("the body is not valid JSON")
    if not isinstance(body, dict) or "features" not in body:
        return bad_request('expected an object with a "features" member')
    features = body["features"]
    if not isinstance(features, list) or len(features) != server_model.FEATURES:
        return bad_request(f'"features" must be an array of {server_model.FEATURES} numbers')
    for i, v in enumerate(features):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return bad_request(f'"features"[{i}] is not a number')
    probabilities = server_model.predict_one(features)
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    return web.json_response({"class": best, "probabilities": probabilities})


async def healthz(request):
    return web.Response(text="ok\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    app = web.Application()
    app.add_routes([web.post("/predict", predict), web.get("/healthz", healthz)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    print(f"server: listening on http://{args.host}:{sock.getsockname()[1]} (mode python)", flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
