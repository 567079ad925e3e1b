"""The loader daemon on the real Kafka and Postgres: kill -9 mid-batch then restart, and two
instances in one group, each ending with every tick stored exactly once."""
import uuid
from decimal import Decimal

import pytest

from common.models import PipelineEvent, Tick
from tests.integration.sinks_util import (stop_leftover_daemons, topics,  # noqa: F401
                                          Daemon, committed, end_offsets, ticks_records,
                                          produce, produce_ticks, read_topic, wait_until)

pytestmark = pytest.mark.integration

N_SYMBOLS = 20
PER_SYMBOL = 600
BASE_MS = 1_764_000_000_000


def symbol_ticks(symbols, duplicate_every=7):
    ticks = []
    for s in symbols:
        for i in range(PER_SYMBOL):
            t = Tick("binance", s, BASE_MS + i * 250, Decimal(1000 + i) / 100, (BASE_MS + i * 250) * 10**6, sequence=i)
            ticks.append(t)
            if i % duplicate_every == 0:          # an upstream duplicate: the same tick twice (two sockets)
                ticks.append(t)
    return ticks


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
    """The group has read everything written to `topic` so far (records written later, e.g. dead
    letters the loader itself writes to a DLQ it also reads, may take it further)."""
    ends = end_offsets(topic, partitions)

    def done():
        got = committed(group, topic, partitions)
        return all(got.get(p, -1) >= end for p, end in ends.items())
    return done


def loader_args(suffix, group, batch=40):
    return ["load", "--group", group, "--topic-suffix", suffix, "--metrics-port", "0",
            "--batch-size", str(batch), "--retention-days", "0", "--log-level", "WARNING"]


def test_kill9_mid_batch_then_restart_loses_and_doubles_nothing(pg, topics, tmp_path):
    symbols = [f"K{uuid.uuid4().hex[:7].upper()}-USDT" for _ in range(N_SYMBOLS)]
    topic = "binance_transformed_data" + topics
    produce_ticks(topic, symbol_ticks(symbols), per_record=10)     # ~1,370 records: many batches
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
    produce_ticks(topic, symbol_ticks(symbols), per_record=10)     # ~1,370 records: many batches
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


def test_poison_records_go_to_the_dlq_and_dead_letters_are_recorded_for_gap_detection(pg, topics, tmp_path):
    """Whatever a transformed record or a pipeline event holds, the loader keeps running: a bad one
    goes to its exchange's DLQ with its reason (value capped), and every dead letter (the
    transformer's and its own) is read back into dlq_records, once, however often it is replayed."""
    from common.codec.dlq import DLQ_MAX_VALUE_BYTES, dead_letter

    symbol = f"P{uuid.uuid4().hex[:7].upper()}-USDT"
    good_tick = Tick("binance", symbol, BASE_MS, Decimal("1.5"), BASE_MS * 10**6, sequence=1)
    ((_, good, good_headers),) = ticks_records([good_tick], partitions=1)
    future_ns = (BASE_MS + 10**12) * 10**6                          # the year 2057
    poison_ticks = [(b"\xff\xfe", b"x" * 900_000, None),            # non-UTF-8 key, 900 kB of garbage
                    (symbol.encode(), b'["a", "list"]', None),      # JSON of the wrong type
                    (symbol.encode(), good.replace(b"\t1.5\t", b"\t1e5\t"), good_headers)]
    poison_events = [(b"binance", b'{"exchange":"binance","conn_id":"forged","kind":"connected","at_ns":%d}'
                      % future_ns, None),
                     (b"kucoin", b"\x00" * 10, None)]
    value, headers = dead_letter(b"frame", reason="malformed_json", stage="transform", exchange="kucoin",
                                 source_topic="kucoin_raw_data", source_partition=0, source_offset=41,
                                 received_ns=BASE_MS * 10**6, symbols=[symbol])
    produce("binance_transformed_data" + topics, poison_ticks + [(None, good, good_headers)], partition=0)
    produce("pipeline_events" + topics, poison_events)
    produce("kucoin_dlq" + topics, [(b"conn", value, headers), (b"junk", b"junk", [("received_ns", b"\xff")])])
    group = "loader-test-" + uuid.uuid4().hex
    loader = Daemon(loader_args(topics, group), tmp_path, "load-poison").start()

    def recorded():
        with pg.cursor() as cur:
            cur.execute("SELECT dlq_topic, stage, reason, source_offset, symbols, untracked FROM dlq_records "
                        "WHERE dlq_topic LIKE %s ORDER BY dlq_topic, dlq_offset", (f"%{topics}",))
            return cur.fetchall()
    wait_until(lambda: len(recorded()) == 7, 120, "7 dead letters recorded", [loader])
    assert loader.alive()
    rows = recorded()
    binance_rows = [r for r in rows if r[0].startswith("binance_dlq")]
    kucoin_rows = [r for r in rows if r[0].startswith("kucoin_dlq")]
    assert [r[1] for r in binance_rows] == ["load"] * 4
    reasons = " | ".join(sorted(r[2] for r in binance_rows))
    for expected in ("unknown_format", "bad_line:0:price", "at_ns_in_the_future"):
        assert expected in reasons, reasons                         # (the last: the forged event)
    assert kucoin_rows[0][1:5] == ("transform", "malformed_json", 41, [symbol])   # the first record produced
    rest = sorted(r[1:3] for r in kucoin_rows[1:])
    assert rest[0][0] == "load" and rest[0][1].startswith("loader: malformed_event")   # the \x00 event, by its key
    assert rest[1] == ("unknown", "unreadable_dead_letter:reason")     # junk in a DLQ: recorded, never re-sent
    dlq = read_topic("binance_dlq" + topics)
    assert max(len(m.value()) for m in dlq) == DLQ_MAX_VALUE_BYTES      # the 900 kB value, capped
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM ticks WHERE exchange = 'binance' AND symbol = %s", (symbol,))
        assert cur.fetchone()[0] == 1                                 # the good tick still flows
        cur.execute("SELECT count(*) FROM stream_sessions WHERE conn_id = 'forged'")
        assert cur.fetchone()[0] == 0
    assert loader.term() == 0
    # a second group replays every topic: the transformer's dead letter is the same record, recorded once
    replay = "loader-test-" + uuid.uuid4().hex
    second = Daemon(loader_args(topics, replay), tmp_path, "load-replay").start()
    wait_until(drained(replay, "kucoin_dlq" + topics, 1), 120, "the replay of kucoin_dlq", [second])
    assert second.term() == 0
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM dlq_records WHERE dlq_topic = %s AND source_offset = 41",
                    ("kucoin_dlq" + topics,))
        assert cur.fetchone()[0] == 1
