"""The websocket benchmark's client mix is issue 17's: 10 % on everything, the rest on ten
symbols each, 10 % reading slowly; and its latency percentiles come from the histogram."""
from collections import Counter

from cryptopipe.bench.api import client_spec
from cryptopipe.bench.ws_clients import _ms, percentiles


def test_client_mix():
    symbols = [f"S{i}-USDT" for i in range(200)]
    spec = client_spec(symbols, 500, 0.1, 0.1, 60)
    clients = spec["clients"]
    everything = [c for c in clients if c["query"] == "/v1/stream"]
    ten = [c for c in clients if "symbols=" in c["query"]]
    assert len(everything) == 50 and len(ten) == 450
    assert all(len(c["query"].split("=", 1)[1].split(",")) == 10 for c in ten)
    assert sum(c["slow"] for c in clients) == 50
    assert sum(c["slow"] for c in everything) == 5


def test_percentiles_and_time_parsing():
    h = Counter({10: 50, 20: 45, 300: 4, 900: 1})
    assert percentiles(h) == {"n": 100, "p50_ms": 10, "p95_ms": 20, "p99_ms": 300, "max_ms": 900}
    assert _ms("2026-11-25T08:00:01.123Z") - _ms("2026-11-25T08:00:00.000Z") == 1123
