"""The loader daemon on the real Kafka and Postgres: kill -9 mid-batch then restart, and two
instances in one group, each ending with every tick stored exactly once."""
import uuid
from decimal import Decimal

import pytest

from common.models import PipelineEvent, Tick
from tests.integration.sinks_util import (stop_leftover_daemons, topics,  # noqa: F401
                                          Daemon, committed, end_offsets,
                                          produce, wait_until)

pytestmark = pytest.mark.integration

N_SYMBOLS = 20
PER_SYMBOL = 600
BASE_MS = 1_764_000_000_000


def tick_records(symbols, duplicate_every=7):
    records = []
    for s in symbols:
        for i in range(PER_SYMBOL):
            t = Tick("binance", s, BASE_MS + i * 250, Decimal(1000 + i) / 100, (BASE_MS + i * 250) * 10**6, sequence=i)
            records.append((s.encode(), t.to_json(), None))
            if i % duplicate_every == 0:          # an upstream replay: the same tick twice
                records.append((s.encode(), t.to_json(), None))
    return records


def db_count(pg, symbols):
    with pg.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (symbol, event_time, sequence)) FROM ticks "
                    "WHERE exchange = 'binance' AND symbol = ANY(%s)", (symbols,))
        return cur.fetchone()


def candle_ticks(pg, symbols):
    with pg.cursor() as cur:
        cur.execute("SELECT coalesce(sum(tick_count), 0) FROM candles_1m WHERE exchange = 'binance' "
                    "AND symbol = ANY(%s)", (symbols,))
        return cur.fetchone()[0]


def drained(group, topic, partitions=3):
    ends = end_offsets(topic, partitions)
    return lambda: committed(group, topic, partitions) == ends


def loader_args(suffix, group, batch=300):
    return ["load", "--group", group, "--topic-suffix", suffix, "--metrics-port", "0",
            "--batch-size", str(batch), "--retention-days", "0", "--log-level", "WARNING"]


def test_kill9_mid_batch_then_restart_loses_and_doubles_nothing(pg, topics, tmp_path):
    symbols = [f"K{uuid.uuid4().hex[:7].upper()}-USDT" for _ in range(N_SYMBOLS)]
    topic = "binance_transformed_data" + topics
    produce(topic, tick_records(symbols))
    group = "loader-test-" + uuid.uuid4().hex
    first = Daemon(loader_args(topics, group), tmp_path, "load-1").start()
    wait_until(lambda: db_count(pg, symbols)[0] >= 2000, 120, "the first batches", [first])
    first.kill9()
    stored_at_kill = db_count(pg, symbols)[0]
    second = Daemon(loader_args(topics, group), tmp_path, "load-2").start()
    wait_until(drained(group, topic), 180, "the loader to commit the whole topic", [second])
    assert second.term() == 0                          # graceful SIGTERM
    total, distinct = db_count(pg, symbols)
    assert stored_at_kill < N_SYMBOLS * PER_SYMBOL     # the kill really happened mid-stream
    assert total == distinct == N_SYMBOLS * PER_SYMBOL
    assert candle_ticks(pg, symbols) == N_SYMBOLS * PER_SYMBOL   # no replayed tick counted twice


def test_two_instances_split_partitions_and_store_everything_once(pg, topics, tmp_path):
    symbols = [f"D{uuid.uuid4().hex[:7].upper()}-USDT" for _ in range(N_SYMBOLS)]
    topic = "binance_transformed_data" + topics
    group = "loader-test-" + uuid.uuid4().hex
    conn_id = "conn-" + uuid.uuid4().hex
    produce(topic, tick_records(symbols))
    produce("pipeline_events" + topics, [
        (b"binance", PipelineEvent("binance", conn_id, "connected", BASE_MS * 10**6).to_json(), None),
        (b"binance", PipelineEvent("binance", conn_id, "disconnected", BASE_MS * 10**6 + 9, reason="x").to_json(), None)])
    a = Daemon(loader_args(topics, group), tmp_path, "load-a").start()
    b = Daemon(loader_args(topics, group), tmp_path, "load-b").start()
    wait_until(drained(group, topic), 180, "both loaders to drain the topic", [a, b])
    assert a.term() == 0 and b.term() == 0
    total, distinct = db_count(pg, symbols)
    assert total == distinct == N_SYMBOLS * PER_SYMBOL
    assert candle_ticks(pg, symbols) == N_SYMBOLS * PER_SYMBOL
    with pg.cursor() as cur:
        cur.execute("SELECT reason, disconnected_at IS NOT NULL FROM stream_sessions WHERE conn_id = %s", (conn_id,))
        assert cur.fetchall() == [("x", True)]
