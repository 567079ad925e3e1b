"""Parsing cost (pytest-benchmark; run with --benchmark-enable for figures): a 2000-symbol
Binance !miniTicker@arr frame (the all-market stream at full size) and one KuCoin ticker frame."""
from __future__ import annotations

import json

from common.exchanges import Binance, KuCoin

from .samples import RECEIVED_NS, jsonl_frames


def _big_mini_ticker_frame(n: int = 2000) -> tuple[bytes, dict]:
    elements, symbols = [], {}
    for i in range(n):
        raw = f"C{i}USDT"
        symbols[raw] = f"C{i}-USDT"
        elements.append({"e": "24hrMiniTicker", "E": 1665778598150 + i, "s": raw, "c": f"{19182 + i}.10000000",
                         "o": "19478.02000000", "h": "19951.87000000", "l": "19100.01000000",
                         "v": "363872.29609000", "q": "7119945056.15496440"})
    frame = json.dumps({"stream": "!miniTicker@arr", "data": elements}, separators=(",", ":")).encode()
    return frame, symbols


def test_bench_binance_all_market_frame(benchmark):
    frame, symbols = _big_mini_ticker_frame()
    adapter = Binance(symbols)
    ticks = benchmark(adapter.parse_ticks, frame, RECEIVED_NS, [])
    assert len(ticks) == 2000 and ticks[-1].symbol == "C1999-USDT"


def test_bench_kucoin_ticker_frame(benchmark):
    frame = jsonl_frames("kucoin-ws-live-2026-10-03.jsonl")[0]
    adapter = KuCoin()
    ticks = benchmark(adapter.parse_ticks, frame, RECEIVED_NS)
    assert ticks[0].symbol == "MOG-USDT"


def test_bench_classify(benchmark):
    frame = jsonl_frames("kucoin-ws-live-2026-10-03.jsonl")[0]
    assert benchmark(KuCoin.classify, frame).kind == "data"
