"""Micro-benchmarks of the CPU stages between Kafka topics, on recorded frames from
tests/fixtures/exchange-samples/ (so a regression points at its stage):

- adapter parse: Binance `!miniTicker@arr` frame (the recorded 2022-10-14 array) and a KuCoin
  `/market/ticker:all` frame (recorded 2026-10-03) -> Ticks;
- normalize for the wire: Tick.to_json (the transformer's output records).
The transformer's routing, the loader's record validation and batch write, the archiver's lines
and the transformer's Kafka produce are in test_sinks_bench.py (sinks).

`make bench-micro` style: `pytest tests/benchmarks --benchmark-enable`; in the normal suite they
run once each as plain tests (pyproject sets --benchmark-disable).
"""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from common.models import Tick
from common.exchanges import get_adapter
from tests.conftest import SAMPLES

RECEIVED_NS = 1_795_000_000_000_000_000


REPEAT = 25  # the recorded array has 41 tickers; real all-market frames carry ~1,000-2,000


def _letters(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 26)
        out = chr(ord("A") + r) + out
        if n == 0:
            return out
        n -= 1


def _binance_frame() -> tuple[bytes, dict[str, str]]:
    """The recorded `!miniTicker@arr` elements, repeated under distinct symbol names (field values as
    recorded), in the combined-stream wrapper, with the symbol map the transformer would hold."""
    recorded = json.loads((SAMPLES / "binance-miniTicker-arr-2022-10-14.json").read_text())
    items, mapping = [], {}
    for i in range(REPEAT * len(recorded)):
        item = dict(recorded[i % len(recorded)])
        base = "Q" + _letters(i)
        item["s"] = f"{base}USDT"
        mapping[item["s"]] = f"{base}-USDT"
        items.append(item)
    frame = json.dumps({"stream": "!miniTicker@arr", "data": items}, separators=(",", ":")).encode()
    return frame, mapping


def _kucoin_frame() -> bytes:
    for line in (SAMPLES / "kucoin-ws-live-2026-10-03.jsonl").read_text().splitlines():
        if '"/market/ticker:all"' in line:
            return line.strip().encode()
    raise AssertionError("no ticker:all frame in the KuCoin sample")


@pytest.fixture(scope="module")
def binance():
    frame, mapping = _binance_frame()
    return frame, get_adapter("binance", mapping)


def test_binance_miniticker_arr_parse(benchmark, binance):
    frame, adapter = binance
    rejects: list = []
    ticks = benchmark(adapter.parse_ticks, frame, RECEIVED_NS, rejects)
    assert len(ticks) + len(rejects) == len(json.loads(frame)["data"])
    assert len(ticks) == REPEAT * 41 and not rejects
    assert all(isinstance(t.price, Decimal) and t.price > 0 for t in ticks)


def test_kucoin_ticker_all_parse(benchmark):
    adapter = get_adapter("kucoin")
    frame = _kucoin_frame()
    ticks = benchmark(adapter.parse_ticks, frame, RECEIVED_NS)
    assert len(ticks) == 1
    assert ticks[0].symbol == "MOG-USDT" and ticks[0].price == Decimal("0.0000001141")


@pytest.fixture(scope="module")
def ticks(binance):
    frame, adapter = binance
    return adapter.parse_ticks(frame, RECEIVED_NS, [])


def test_tick_to_wire_batch(benchmark, ticks):
    from common.codec.ticks import line_tick, tick_line

    out = benchmark(lambda: [tick_line(t) for t in ticks])
    assert len(out) == len(ticks)
    assert line_tick(out[0]) == ticks[0]
