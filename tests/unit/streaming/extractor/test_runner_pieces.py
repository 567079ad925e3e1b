"""Pure pieces of the runner: sharding plans, backoff, the uplink rate limiter, CLI parsing."""
from __future__ import annotations

import asyncio
import random
import time

import pytest

from streaming.exchanges import KuCoin
from streaming.extractor.cli import parse_args
from streaming.extractor.runner import Backoff, Extractor, plan_binance, plan_kucoin, shard_scopes
from streaming.extractor.transport import Options, RateLimiter


def test_plan_binance_default_symbols_extras_and_shards():
    assert plan_binance([], [], 1024) == [["!miniTicker@arr"]]
    assert plan_binance(["BTC-USDT", "ETH-BTC"], ["btcusdt@trade"], 1024) == [
        ["btcusdt@miniTicker", "ethbtc@miniTicker", "btcusdt@trade"]]
    symbols = [f"C{i}-USDT" for i in range(2100)]
    shards = plan_binance(symbols, [], 1024)
    assert [len(s) for s in shards] == [1024, 1024, 52]
    assert [len(s) for s in plan_binance(symbols, [], 5000)] == [1024, 1024, 52]     # never above 1024


def test_plan_kucoin_respects_300_topics_per_connection():
    assert plan_kucoin([], [], 300) == [["/market/ticker:all"]]
    symbols = [f"C{i}-USDT" for i in range(750)]
    shards = plan_kucoin(symbols, [], 300)
    counts = [sum(KuCoin.topic_count(t) for t in shard) for shard in shards]
    assert counts == [300, 300, 150]
    assert all(KuCoin.topic_count(t) <= 100 for shard in shards for t in shard)
    assert sorted(s for shard in shards for t in shard for s in t.split(":")[1].split(",")) == sorted(symbols)


def test_shard_scopes_name_each_connections_symbols():
    symbols = [f"C{i}-USDT" for i in range(2100)]
    shards = plan_binance(symbols, [], 1024)
    scopes = shard_scopes("binance", symbols, shards)
    assert [len(s) for s in scopes] == [1024, 1024, 52]
    assert sorted(s for scope in scopes for s in scope) == sorted(symbols)
    assert scopes[2] == sorted(symbols[2048:])
    k_symbols = [f"K{i}-USDT" for i in range(750)]
    k_scopes = shard_scopes("kucoin", k_symbols, plan_kucoin(k_symbols, [], 300))
    assert [len(s) for s in k_scopes] == [300, 300, 150] and set(k_scopes[1]) == set(k_symbols[300:600])
    # one connection, or an all-market stream: the shard covers all the extractor streams (None)
    assert shard_scopes("binance", ["BTC-USDT"], plan_binance(["BTC-USDT"], [], 1024)) == [None]
    assert shard_scopes("kucoin", [], [["/market/ticker:all"], ["/market/match:BTC-USDT"]]) == [None, []]
    assert shard_scopes("binance", [], [["!miniTicker@arr"], ["btcusdt@trade"]]) == [None, []]
    assert KuCoin.ticker_topic_symbols("/market/ticker:A-B,C-D") == ["A-B", "C-D"]
    with pytest.raises(ValueError, match="2 scopes for 1 shards"):
        Extractor("binance", [[]], None, None, None, Options(), scopes=[None, None])


def test_backoff_is_jittered_capped_and_reset_after_a_healthy_period():
    rng = random.Random(7)
    b = Backoff(base_s=0.5, cap_s=4.0, healthy_s=60)
    delays = [b.next_delay(rng) for _ in range(12)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(delays[6:]) > 1.0                      # grows
    assert len(set(delays)) == len(delays)            # jittered
    b.lived(10)
    assert b.attempt == 12
    b.lived(61)
    assert b.attempt == 0 and b.next_delay(rng) <= 0.5


def test_rate_limiter_never_exceeds_its_window():
    async def go():
        limiter = RateLimiter(4, 0.2)
        stamps = []
        for _ in range(12):
            await limiter.wait()
            stamps.append(time.monotonic())
        return stamps
    stamps = asyncio.run(go())
    for i in range(len(stamps) - 4):
        assert stamps[i + 4] - stamps[i] >= 0.2 - 1e-3


def test_cli_defaults_and_options():
    args = parse_args(["binance"])
    assert (args.metrics_port, args.spool_max_bytes, args.stall_seconds) == (None, 1 << 30, 15.0)
    args = parse_args(["kucoin", "--symbols", "BTC-USDT, ETH-USDT", "--metrics-port", "0", "--label", "x1"])
    assert args.symbols == ["BTC-USDT", "ETH-USDT"] and args.metrics_port == 0
    with pytest.raises(SystemExit):
        parse_args(["kraken"])


def test_label_must_be_safe():
    with pytest.raises(ValueError):
        Extractor("binance", [[]], None, None, None, Options(), label="a b;c")


def test_topic_suffix_reaches_raw_and_event_records():
    from streaming.extractor.events import Events
    from streaming.extractor.transport import BinanceConnection

    class Sink:
        def __init__(self):
            self.records = []

        def offer(self, record, event=False):
            self.records.append(record)
            return True

    async def go():
        sink = Sink()
        events = Events("binance", sink, topic_suffix="_bench1")
        events.emit("connected", "bi-x")
        conn = BinanceConnection([], sink, events, None, Options(topic_suffix="_bench1"), asyncio.Event())
        return sink.records[0].topic, conn.topic

    assert asyncio.run(go()) == ("pipeline_events_bench1", "binance_raw_data_bench1")
    assert parse_args(["binance", "--topic-suffix", "_b"]).topic_suffix == "_b"
