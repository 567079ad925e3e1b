"""Shared helpers of the simulator tests: payload shapes, recorded samples, websocket reading."""
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from websockets.sync.client import connect as _connect

from tests.conftest import SAMPLES


def connect(url, **kw):
    """A sync websocket client on loopback (never through a proxy), usable with or without `with`."""
    kw.setdefault("proxy", None)
    kw.setdefault("close_timeout", 1)
    kw.setdefault("max_queue", 4096)
    return _connect(url, legacy=True, **kw)


def shape(v):
    """Keys and JSON types, recursively (lists: the shape of every element, deduplicated)."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        out = []
        for x in v:
            s = shape(x)
            if s not in out:
                out.append(s)
        return out
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if v is None:
        return "null"
    return "str"


def sample_lines(name):
    return [json.loads(line) for line in (SAMPLES / name).read_text().splitlines() if line.strip()]


def sample_json(name):
    return json.loads((SAMPLES / name).read_text())


def get(url):
    """(status, headers, parsed body)"""
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            body = json.loads(body)
        except ValueError:
            pass
        return e.code, dict(e.headers), body


def post(url):
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=20) as r:
        return r.status, dict(r.headers), json.loads(r.read())


def read_until(ws, pred, limit_s=15.0, max_frames=100_000):
    """Read frames until pred(parsed) is true; returns (that frame, every parsed frame before it)."""
    seen = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and len(seen) < max_frames:
        try:
            raw = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
        msg = json.loads(raw)
        if pred(msg):
            return msg, seen
        seen.append(msg)
    raise AssertionError(f"no matching frame within {limit_s}s; last frames: {seen[-3:]}")


def kucoin_connect(sim, connect_id="t1", **kw):
    _, _, bullet = post(sim.env["KUCOIN_REST_URL"] + "/api/v1/bullet-public")
    server = bullet["data"]["instanceServers"][0]
    token = bullet["data"]["token"]
    ws = connect(f"{server['endpoint']}?token={token}&connectId={connect_id}", max_size=None, **kw)
    return ws, token, server


def together(*fns):
    """Run each callable in its own thread (e.g. one reader per socket); their results, in order."""
    results = [None] * len(fns)

    def run(i, fn):
        results[i] = fn()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
