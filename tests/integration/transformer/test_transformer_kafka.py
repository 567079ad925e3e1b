"""The transformer daemon on the real Kafka: exactly-once through kill -9 and with two instances
(transactions: read_committed output holds each tick once), and the DLQ on the wire."""
import json
import uuid

from common.codec.ticks import decode_ticks, partition_for

import pytest

from tests.integration.sinks_util import (stop_leftover_daemons, topics,  # noqa: F401
                                          Daemon, committed, end_offsets,
                                          produce, raw_headers, read_topic, wait_until)

pytestmark = pytest.mark.integration

N_FRAMES = 6000
BASE_MS = 1_790_983_975_701


def kucoin_frame(symbol: str, seq: int) -> bytes:
    return json.dumps({"topic": "/market/ticker:all", "type": "message", "subject": symbol,
                       "data": {"bestAsk": "2.5", "bestAskSize": "1", "bestBid": "2.4", "bestBidSize": "3",
                                "price": f"2.{seq:06d}", "sequence": str(seq), "size": "0.1",
                                "time": BASE_MS + seq}}, separators=(",", ":")).encode()


def raw_records(symbols, n):
    out = []
    for i in range(n):
        s = symbols[i % len(symbols)]
        conn = f"conn-{i % 3}"
        out.append((conn.encode(), kucoin_frame(s, i), raw_headers((BASE_MS + i) * 10**6 + 1, conn, "kucoin")))
    return out


def transform_args(suffix, group, instance, batch=250):
    return ["transform", "--group", group, "--topic-suffix", suffix, "--exchanges", "kucoin",
            "--instance", instance, "--metrics-port", "0", "--batch-size", str(batch), "--log-level", "WARNING"]


def drained(group, topic):
    ends = end_offsets(topic, 3)
    return lambda: committed(group, topic, 3) == ends


def assert_exactly_once(topic, n, symbols):
    records = read_topic(topic)
    ticks = [(m.partition(), t) for m in records for t in decode_ticks(m.value(), m.headers(), "kucoin")]
    keys = [(t.symbol, t.sequence) for _, t in ticks]
    assert len(keys) == n, f"{len(keys)} ticks for {n} frames"
    assert len(set(keys)) == n
    assert {k for k, _ in keys} == set(symbols)
    # a symbol always lands in one partition (its symbol's), in the order it was read
    parts = {}
    for partition, t in ticks:
        parts.setdefault(t.symbol, set()).add(partition)
    assert all(p == {partition_for(sym, 3)} for sym, p in parts.items())
    by_symbol = {}
    for _, t in ticks:
        by_symbol.setdefault(t.symbol, []).append(t.sequence)
    assert all(seqs == sorted(seqs) for seqs in by_symbol.values())


def test_kill9_mid_stream_then_restart_gives_each_tick_exactly_once(topics, tmp_path):
    symbols = [f"X{uuid.uuid4().hex[:6].upper()}-USDT" for _ in range(12)]
    raw, out = "kucoin_raw_data" + topics, "kucoin_transformed_data" + topics
    produce(raw, raw_records(symbols, N_FRAMES))
    group = "transformer-test-" + uuid.uuid4().hex
    first = Daemon(transform_args(topics, group, "0"), tmp_path, "t1").start()
    wait_until(lambda: sum(committed(group, raw, 3).values()) > 1000, 120, "the first transactions", [first])
    first.kill9()
    assert sum(committed(group, raw, 3).values()) < N_FRAMES      # killed mid-stream
    second = Daemon(transform_args(topics, group, "0"), tmp_path, "t2").start()
    wait_until(drained(group, raw), 180, "the transformer to commit the raw topic", [second])
    assert second.term() == 0
    assert_exactly_once(out, N_FRAMES, symbols)
    assert read_topic("kucoin_dlq" + topics) == []


def test_two_instances_in_one_group_give_each_tick_exactly_once(topics, tmp_path):
    symbols = [f"Y{uuid.uuid4().hex[:6].upper()}-USDT" for _ in range(12)]
    raw, out = "kucoin_raw_data" + topics, "kucoin_transformed_data" + topics
    group = "transformer-test-" + uuid.uuid4().hex
    a = Daemon(transform_args(topics, group, "a"), tmp_path, "ta").start()
    b = Daemon(transform_args(topics, group, "b"), tmp_path, "tb").start()
    produce(raw, raw_records(symbols, N_FRAMES))
    wait_until(drained(group, raw), 180, "two transformers to commit the raw topic", [a, b])
    assert a.term() == 0 and b.term() == 0
    assert_exactly_once(out, N_FRAMES, symbols)
