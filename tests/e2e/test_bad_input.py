"""Hostile input through the running pipeline: every bad frame lands in its exchange's DLQ with a
reason and its source coordinates, no row is stored for it, and nothing crashes."""
import json
import time
import uuid

import pytest
from confluent_kafka import TopicPartition

from common.kafka import make_consumer, make_producer
from tests.plugins.pipeline import Figures, now_ms, wait_for

pytestmark = pytest.mark.e2e


def kucoin_frame(subject: str, price: str = "1.5", t: int | None = None) -> bytes:
    return json.dumps({"topic": "/market/ticker:all", "type": "message", "subject": subject,
                       "data": {"bestAsk": "1.6", "bestAskSize": "1", "bestBid": "1.4", "bestBidSize": "1",
                                "price": price, "sequence": "7", "size": "0.1", "time": t or now_ms()}}).encode()


def binance_frame(symbol: str, close: str = "1.5") -> bytes:
    return json.dumps({"stream": "!miniTicker@arr", "data": [
        {"e": "24hrMiniTicker", "E": now_ms(), "s": symbol, "c": close, "o": "1", "h": "2", "l": "1",
         "v": "10", "q": "15"}]}).encode()


HOSTILE_SYMBOLS = ["BTC'-USDT", "BTC;DROP TABLE ticks;--", "../../etc/passwd", "БТЦ-USDT", "BTC-USDT\u202e",
                   "BTC\x00-USDT"]


def bad_frames() -> dict[str, list[tuple[str, bytes]]]:
    nested = b'{"topic":"/market/ticker:all","data":' + b"[" * 5000 + b"]" * 5000 + b"}"
    return {
        "kucoin": [
            ("oversized", kucoin_frame("BTC-USDT")[:-1] + b',"pad":"' + b"x" * (2 << 20) + b'"}'),
            ("deeply_nested", nested),
            ("invalid_utf8", b"\xff\xfe" + kucoin_frame("BTC-USDT")),
            ("nan_price", kucoin_frame("BTC-USDT", "NaN")),
            ("infinite_price", kucoin_frame("BTC-USDT", "Infinity")),
            ("negative_price", kucoin_frame("BTC-USDT", "-1.5")),
            ("exponent_price", kucoin_frame("BTC-USDT", "1e5")),
            ("absurd_time", kucoin_frame("BTC-USDT", "1.5", t=32503680000000)),
            ("truncated", kucoin_frame("BTC-USDT")[:40]),
        ] + [(f"hostile_symbol_{i}", kucoin_frame(s)) for i, s in enumerate(HOSTILE_SYMBOLS)],
        "binance": [
            ("nan_price", binance_frame("BTCUSDT", "NaN")),
            ("not_json", b"{this is not json"),
        ] + [(f"hostile_symbol_{i}", binance_frame(s)) for i, s in enumerate(HOSTILE_SYMBOLS)],
    }


def test_hostile_frames_go_to_the_dlq_with_reasons(live_pipeline, pg):
    h = live_pipeline
    conn_id = f"hostile-{uuid.uuid4().hex[:8]}"
    producer = make_producer({"message.max.bytes": 8 << 20})
    sent: dict[tuple[str, int], str] = {}

    def delivered(err, msg, name=None):
        assert err is None, err
        sent[(msg.topic(), msg.offset())] = name

    for exchange, frames in bad_frames().items():
        for name, value in frames:
            producer.produce(f"{exchange}_raw_data", value=value, key=conn_id.encode(), partition=0,
                             headers={"received_ns": str(time.time_ns()), "conn_id": conn_id, "exchange": exchange},
                             on_delivery=lambda err, msg, name=name: delivered(err, msg, name))
    assert producer.flush(30) == 0
    total = sum(len(v) for v in bad_frames().values())
    assert len(sent) == total

    found: dict[tuple[str, int], str] = {}

    def scan():
        for exchange in ("binance", "kucoin"):
            c = make_consumer(f"test-dlq-{uuid.uuid4()}", {"isolation.level": "read_committed"})
            c.assign([TopicPartition(f"{exchange}_dlq", 0, 0)])
            while True:
                msgs = c.consume(500, timeout=2)
                if not msgs:
                    break
                for m in msgs:
                    if m.error():
                        continue
                    hd = {k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers() or [])}
                    if hd.get("source_partition") != "0":
                        continue
                    key = (hd.get("source_topic"), int(hd.get("source_offset", -1)))
                    if key in sent:
                        found[key] = hd.get("reason", "")
            c.close()
        return len(found) == total or None

    wait_for(scan, 120, "every hostile frame in the DLQ")
    fig = Figures("bad_input_dlq")
    fig.add(frames=total, dlq_records=len(found))
    for key, name in sent.items():
        assert found[key], f"{name}: DLQ record without a reason"
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM ticks WHERE symbol !~ '^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}$'")
        assert cur.fetchone()[0] == 0, "a non-canonical symbol reached the ticks table"
        cur.execute("SELECT to_regclass('ticks') IS NOT NULL")
        assert cur.fetchone()[0] is True
    fig.add(reasons=len(set(r.split(":")[0] for r in found.values())))
    fig.print()
    assert h.all_running() == {}, "a daemon died on hostile input"
