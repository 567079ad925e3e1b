"""Pure pieces of the runner: backoff, the uplink rate limiter, CLI parsing (the sharding plans are
the plugs': tests/unit/common/exchanges/test_shards.py)."""
from __future__ import annotations

import asyncio
import random
import time

import pytest

from common.exchanges import plug
from streaming.extractor.cli import parse_args
from streaming.extractor.runner import Backoff, Extractor
from streaming.extractor.transport import Options, RateLimiter


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


def test_extractor_needs_one_scope_per_shard():
    with pytest.raises(ValueError, match="2 scopes for 1 shards"):
        Extractor("binance", [[]], None, None, None, Options(), scopes=[None, None])


def test_label_must_be_safe():
    with pytest.raises(ValueError):
        Extractor("binance", [[]], None, None, None, Options(), label="a b;c")


def test_topic_suffix_reaches_raw_and_event_records():
    from streaming.extractor.events import Events
    from streaming.extractor.transport import Connection

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
        conn = Connection(plug("binance"), [], sink, events, None, Options(topic_suffix="_bench1"), asyncio.Event())
        return sink.records[0].topic, conn.topic

    assert asyncio.run(go()) == ("pipeline_events_bench1", "binance_raw_data_bench1")
    assert parse_args(["binance", "--topic-suffix", "_b"]).topic_suffix == "_b"
