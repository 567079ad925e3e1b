"""`python -m cryptopipe.bench.ws_clients URL SPEC.json OUT.json`: the websocket client load of
`cryptopipe bench-api`, in one asyncio process.

SPEC: {"clients": [{"query": "...", "slow": bool}], "seconds": float, "slow_read_interval_s": float,
"latency_exchange": "kucoin"}.
A fast client reads as fast as it can; a slow one reads one frame per `slow_read_interval_s` and,
when the server drops it, connects again (as a real slow client would). For every KuCoin tick a
fast client receives, (receipt time - the tick's exchange time) goes into a 1-ms histogram per
client class (the simulator sends KuCoin tickers at most 100 ms after their exchange time; its
own send delay is measured separately from its ground truth).
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from datetime import datetime


_MINUTES: dict[str, float] = {}


def _ms(iso: str) -> float:
    """'2026-11-25T08:00:01.123Z' -> epoch ms, parsing each minute's prefix once (hot loop)."""
    base = _MINUTES.get(iso[:16])
    if base is None:
        base = _MINUTES[iso[:16]] = datetime.fromisoformat(iso[:16] + "+00:00").timestamp() * 1000
    return base + int(iso[17:19]) * 1000 + int(iso[20:23])


class Stats:
    def __init__(self):
        self.hist: dict[str, Counter] = {"all": Counter(), "ten": Counter()}
        self.ticks = Counter()
        self.frames = Counter()
        self.closes = Counter()
        self.connects = Counter()
        self.refused = 0
        self.latency_exchange = ""        # whose ticks the histograms time (SPEC latency_exchange)


async def client(url: str, query: str, slow: bool, cls: str, stats: Stats, until: float, interval: float):
    import orjson
    import websockets

    while time.monotonic() < until:
        try:
            async with websockets.connect(url + query, max_size=2**26, open_timeout=30, ping_interval=None,
                                          max_queue=4) as ws:
                stats.connects[cls + ("-slow" if slow else "")] += 1
                while time.monotonic() < until:
                    try:
                        frame = await asyncio.wait_for(ws.recv(), timeout=max(0.1, until - time.monotonic()))
                    except asyncio.TimeoutError:
                        return
                    now = time.time() * 1000
                    data = orjson.loads(frame)
                    ticks = data if isinstance(data, list) else [data]
                    key = cls + ("-slow" if slow else "")
                    stats.frames[key] += 1
                    stats.ticks[key] += len(ticks)
                    if slow:
                        await asyncio.sleep(interval)
                        continue
                    h = stats.hist[cls]
                    for t in ticks:
                        if t["exchange"] == stats.latency_exchange:
                            h[int(now - _ms(t["event_time"]))] += 1
        except websockets.ConnectionClosed as e:
            stats.closes[f"{e.rcvd.code if e.rcvd else 'none'}"] += 1
            await asyncio.sleep(0.5)
        except (OSError, websockets.InvalidStatus, asyncio.TimeoutError):
            stats.refused += 1
            await asyncio.sleep(1.0)


def percentiles(hist: Counter) -> dict:
    n = sum(hist.values())
    if not n:
        return {"n": 0}
    out, seen, wanted = {"n": n}, 0, [(50, "p50_ms"), (95, "p95_ms"), (99, "p99_ms"), (100, "max_ms")]
    for value in sorted(hist):
        seen += hist[value]
        while wanted and seen >= n * wanted[0][0] / 100:
            out[wanted.pop(0)[1]] = value
    return out


async def run(url: str, spec: dict) -> dict:
    stats = Stats()
    stats.latency_exchange = spec["latency_exchange"]
    until = time.monotonic() + spec["seconds"]
    tasks = []
    for c in spec["clients"]:
        cls = "all" if "symbols=" not in c["query"] else "ten"
        tasks.append(asyncio.create_task(client(url, c["query"], c["slow"], cls, stats, until,
                                                spec.get("slow_read_interval_s", 1.0))))
        await asyncio.sleep(0.005)          # do not open 500 sockets in one burst
    await asyncio.gather(*tasks)
    return {"latency_kucoin": {k: percentiles(h) for k, h in stats.hist.items()},
            "ticks": dict(stats.ticks), "frames": dict(stats.frames), "closes": dict(stats.closes),
            "connects": dict(stats.connects), "refused": stats.refused}


def main(argv: list[str]) -> int:
    url, spec_path, out_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    result = asyncio.run(run(url, spec))
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
