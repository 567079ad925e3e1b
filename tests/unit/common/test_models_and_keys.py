from datetime import datetime, timezone
from decimal import Decimal

import pytest

from common.codec.events import decode_event
from common.models import PipelineEvent, Tick, ns_to_dt
from common.s3 import backfill_response_key, raw_archive_key
from common.topics import ALL_TOPICS, exchange_of_topic, topic_specs


def test_tick_wire_round_trip_keeps_exact_decimals():
    from common.codec.ticks import line_tick, tick_line

    t = Tick(exchange="kucoin", symbol="MOG-USDT", event_time_ms=1790983975701, price=Decimal("0.0000001141"),
             received_ns=1790983975801234567, sequence=1226485690, bid=Decimal("0.000000114"),
             ask=Decimal("0.0000001143"), volume_24h=Decimal("12345678901234567890.123456789"))
    back = line_tick(tick_line(t))
    assert back == t
    assert "\t0.0000001141\t" in tick_line(t)
    assert back.event_time == datetime(2026, 10, 2, 23, 32, 55, 701000, tzinfo=timezone.utc)


def test_ns_to_dt_is_utc_and_exact_to_the_microsecond():
    assert ns_to_dt(1_700_000_000_123_456_789) == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc)


def test_pipeline_event_round_trip():
    e = PipelineEvent("binance", "c1", "disconnected", 1_764_000_000_000_000_000, reason="stall", detail={"after_s": 5})
    assert decode_event(e.to_json(), e.at_ns) == e


def test_raw_key_is_a_function_of_offsets():
    t = datetime(2026, 11, 25, 8, 59, 59, tzinfo=timezone.utc)
    key = raw_archive_key("binance", "binance_raw_data", 2, 1234, t)
    assert key == "raw/exchange=binance/date=2026-11-25/hour=08/binance_raw_data+2+1234.jsonl.gz"
    assert key == raw_archive_key("binance", "binance_raw_data", 2, 1234, t)


@pytest.mark.parametrize("exchange,topic", [("../x", "binance_raw_data"), ("binance", "a/../b"), ("binance", "..")])
def test_raw_key_rejects_unsafe_parts(exchange, topic):
    with pytest.raises(ValueError):
        raw_archive_key(exchange, topic, 0, 0, datetime.now(timezone.utc))


def test_backfill_key_rejects_hostile_symbol():
    s = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert backfill_response_key("kucoin", "BTC-USDT", "1m", s, s).startswith("backfill/exchange=kucoin/symbol=BTC-USDT/")
    with pytest.raises(ValueError):
        backfill_response_key("kucoin", "../../BTC", "1m", s, s)


def test_topics_match_design():
    assert set(ALL_TOPICS) == {"binance_raw_data", "kucoin_raw_data", "binance_transformed_data",
                               "kucoin_transformed_data", "binance_dlq", "kucoin_dlq", "pipeline_events"}
    specs = topic_specs(3, 1000)
    assert specs["binance_raw_data"]["partitions"] == 3
    assert exchange_of_topic("kucoin_dlq") == "kucoin"
