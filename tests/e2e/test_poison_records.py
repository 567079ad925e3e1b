"""Poison records produced straight to every topic the daemons read, on the real broker, while the
pipeline runs: each lands in its exchange's DLQ with a reason and its source coordinates, no
daemon restarts (supervisord's start time and pid unchanged) and ticks keep flowing."""
import json
import time
import uuid

import pytest
from confluent_kafka import TopicPartition

from common.kafka import make_consumer, make_producer
from tests.plugins.pipeline import Figures, wait_for

pytestmark = pytest.mark.e2e

NOW_NS = time.time_ns()
GOOD_NS = str(NOW_NS).encode()


def kucoin_frame() -> bytes:
    return json.dumps({"topic": "/market/ticker:all", "type": "message", "subject": "BTC-USDT",
                       "data": {"price": "1.5", "sequence": "7", "size": "0.1", "time": NOW_NS // 10**6}}).encode()


def raw_poison(exchange: str) -> list[tuple[str, bytes | None, bytes, list]]:
    """(name, key, value, headers) of records only a hostile or broken producer writes."""
    good = [("conn_id", b"poison"), ("exchange", exchange.encode())]
    frame = kucoin_frame()
    return [
        ("received_ns_beyond_int64", b"poison", frame, [("received_ns", str(2 ** 63 + 7).encode()), *good]),
        ("received_ns_not_numeric", b"poison", frame, [("received_ns", b"soon"), *good]),
        ("received_ns_missing", b"poison", frame, good),
        ("received_ns_repeated", b"poison", frame, [("received_ns", GOOD_NS), ("received_ns", GOOD_NS), *good]),
        ("oversized_header", b"poison", frame, [("received_ns", GOOD_NS), ("conn_id", b"c" * 4096)]),
        ("non_utf8_key_and_value", b"\xff\xfe\x00", b"\xff" * 64, [("received_ns", GOOD_NS), *good]),
        ("one_megabyte_value", b"poison", b"[" + b"1," * 450_000 + b"1]", [("received_ns", GOOD_NS), *good]),
        ("json_of_the_wrong_type", b"poison", b'"just a string"', [("received_ns", GOOD_NS), *good]),
    ]


def transformed_poison(exchange: str) -> list[tuple[str, bytes | None, bytes, list]]:
    tick = {"exchange": exchange, "symbol": "BTC-USDT", "event_time_ms": NOW_NS // 10**6, "received_ns": NOW_NS,
            "sequence": 1, "price": "1.5"}
    return [
        ("tick_received_ns_beyond_int64", b"BTC-USDT", json.dumps({**tick, "received_ns": 2 ** 64}).encode(), []),
        ("tick_price_a_number", b"BTC-USDT", json.dumps({**tick, "price": 1.5}).encode(), []),
        ("tick_symbol_a_list", b"BTC-USDT", json.dumps({**tick, "symbol": ["BTC-USDT"]}).encode(), []),
        ("tick_non_utf8", b"\xff", b"\xff\xfe" * 100, []),
        ("tick_one_megabyte", b"BTC-USDT", b'{"pad":"' + b"x" * 900_000 + b'"}', []),
        ("tick_wrong_type", b"BTC-USDT", b"[1, 2, 3]", []),
    ]


def event_poison(exchange: str) -> list[tuple[str, bytes | None, bytes, list]]:
    ev = {"exchange": exchange, "conn_id": f"forged-{uuid.uuid4().hex[:6]}", "kind": "connected", "at_ns": NOW_NS}
    return [
        ("event_in_the_year_2099", exchange.encode(), json.dumps({**ev, "at_ns": 4_070_908_800 * 10**9}).encode(), []),
        ("event_before_2009", exchange.encode(), json.dumps({**ev, "at_ns": 10**18}).encode(), []),
        ("event_at_ns_a_string", exchange.encode(), json.dumps({**ev, "at_ns": str(NOW_NS)}).encode(), []),
        ("event_not_json", exchange.encode(), b"\x00\x01garbage", []),
        ("event_one_megabyte", exchange.encode(), b'{"pad":"' + b"x" * 900_000 + b'"}', []),
    ]


def supervisor_starts(h) -> dict:
    return {i["name"]: (i["pid"], i["start"]) for i in h.rpc().getAllProcessInfo()
            if i["name"] in ("extract-binance", "extract-kucoin", "transform", "load", "archive")}


def test_poison_records_on_every_topic_go_to_the_dlq_and_stop_no_daemon(live_pipeline, pg):
    h = live_pipeline
    h.wait_streaming(pg)
    before = supervisor_starts(h)
    producer = make_producer({"message.max.bytes": 2 << 20})
    sent: dict[tuple[str, int, int], tuple[str, str]] = {}     # (topic, partition, offset) -> (exchange, name)

    def delivered(err, msg, exchange, name):
        assert err is None, err
        sent[(msg.topic(), msg.partition(), msg.offset())] = (exchange, name)

    plan = []
    for exchange in ("binance", "kucoin"):
        plan += [(f"{exchange}_raw_data", exchange, rec) for rec in raw_poison(exchange)]
        plan += [(f"{exchange}_transformed_data", exchange, rec) for rec in transformed_poison(exchange)]
        plan += [("pipeline_events", exchange, rec) for rec in event_poison(exchange)]
    for topic, exchange, (name, key, value, headers) in plan:
        producer.produce(topic, value=value, key=key, headers=headers,
                         on_delivery=lambda err, msg, ex=exchange, n=name: delivered(err, msg, ex, n))
    assert producer.flush(60) == 0 and len(sent) == len(plan)

    found: dict[tuple[str, int, int], str] = {}

    def scan():
        for exchange in ("binance", "kucoin"):
            c = make_consumer(f"test-poison-{uuid.uuid4()}")
            c.assign([TopicPartition(f"{exchange}_dlq", 0, 0)])
            while msgs := c.consume(1000, timeout=2):
                for m in msgs:
                    if m.error():
                        continue
                    hd = dict(m.headers() or [])
                    try:
                        key = (hd["source_topic"].decode(), int(hd["source_partition"]), int(hd["source_offset"]))
                    except (KeyError, ValueError):
                        continue
                    if key in sent:
                        found[key] = f"{exchange}:{hd.get('reason', b'').decode()}"
            c.close()
        return len(found) == len(sent) or None

    wait_for(scan, 180, "every poison record in a DLQ")
    fig = Figures("poison_records")
    for key, (exchange, name) in sent.items():
        dlq_exchange, _, reason = found[key].partition(":")
        assert reason, f"{name}: dead letter without a reason"
        assert dlq_exchange == exchange, f"{name}: in the {dlq_exchange} DLQ"
    assert supervisor_starts(h) == before, "a daemon restarted on a poison record"
    started = time.time()
    wait_for(lambda: _fresh_ticks(pg, started), 60, "ticks still flowing after the poison")
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM stream_sessions WHERE conn_id LIKE 'forged-%'")
        assert cur.fetchone()[0] == 0, "a forged pipeline event became a session"
    fig.add(records=len(sent), topics=len({k[0] for k in sent}), reasons=len({v for v in found.values()}))
    fig.print()


def _fresh_ticks(pg, since: float):
    with pg.cursor() as cur:
        cur.execute("SELECT count(DISTINCT exchange) FROM ticks WHERE received_at > to_timestamp(%s)", (since,))
        return cur.fetchone()[0] == 2 or None
