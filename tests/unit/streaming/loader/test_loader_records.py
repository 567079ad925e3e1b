"""Loader, pure parts: which transformed records and pipeline events it accepts, and how."""
import json
from decimal import Decimal

import pytest

from common.models import PipelineEvent, Tick
from streaming.consumer_loop import Metrics, StopFlag
from common.codec import BadRecord
from common.codec.events import decode_event
from streaming.loader import Loader, merge_events, tick_copy_line
from tests.unit.streaming.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer

NS = 1_764_000_000_000_000_000
MS = NS // 1_000_000


def tick(**kw):
    base = dict(exchange="binance", symbol="BTC-USDT", event_time_ms=MS, price=Decimal("67220.01"),
                received_ns=NS + 5, sequence=7, bid=Decimal("0.0000001141"), volume_24h=Decimal("12.5"))
    base.update(kw)
    return Tick(**base)


def test_copy_line_keeps_exact_decimals_and_nulls():
    line = tick_copy_line(tick().to_json(), "binance")
    fields = line.split("\t")
    assert fields[:5] == ["binance", "BTC-USDT", str(MS), "7", "67220.01"]
    assert Decimal(fields[5]) == Decimal("0.0000001141")     # bid, exact
    assert fields[6] == "\\N"                                 # bid_size absent -> NULL
    assert Decimal(fields[13]) == Decimal("12.5")             # volume_24h
    assert fields[-1] == str(NS + 5)


@pytest.mark.parametrize("value, reason", [
    (b"", "empty"),
    (b"{not json", "malformed JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"exchange":"ftx"}', "unknown exchange"),
    (b'{"exchange":"kucoin","symbol":"BTC-USDT","event_time_ms":1764000000000,"received_ns":1764000000000000000,"price":"1"}',
     "on the binance topic"),
    (b'{"exchange":"binance","symbol":"BTC/USDT","event_time_ms":1764000000000,"received_ns":1764000000000000000,"price":"1"}',
     "canonical"),
    (b'{"exchange":"binance","symbol":"BTC-USDT\\t","event_time_ms":1764000000000,"received_ns":1764000000000000000,"price":"1"}',
     "canonical"),
    (b'{"exchange":"binance","symbol":["BTC-USDT"],"event_time_ms":1764000000000,"received_ns":1764000000000000000,"price":"1"}',
     "canonical"),
    (b'{"exchange":"binance","symbol":{"a":1},"event_time_ms":1764000000000,"received_ns":1764000000000000000,"price":"1"}',
     "canonical"),
    (b'{"exchange":"binance","symbol":"BTC-USDT","event_time_ms":"1764000000000","received_ns":1764000000000000000,"price":"1"}',
     "event_time_ms is not an integer"),
    (b'{"exchange":"binance","symbol":"BTC-USDT","event_time_ms":99,"received_ns":1764000000000000000,"price":"1"}',
     "event_time_ms out of range"),
    (b'{"exchange":"binance","symbol":"BTC-USDT","event_time_ms":1764000000000,"received_ns":1764000000000000000}',
     "missing price"),
    (b'{"exchange":"binance","symbol":"BTC-USDT","event_time_ms":1764000000000,"received_ns":1764000000000000000,"price":"NaN"}',
     "not a finite decimal"),
    (b'{"exchange":"binance","symbol":"BTC-USDT","event_time_ms":1764000000000,"received_ns":1764000000000000000,"price":"0"}',
     "not positive"),
    (b'{"exchange":"binance","symbol":"BTC-USDT","event_time_ms":1764000000000,"received_ns":1764000000000000000,"price":"-1"}',
     "not positive"),
    (b'{"exchange":"binance","symbol":"BTC-USDT","event_time_ms":1764000000000,"received_ns":1764000000000000000,"price":1.5}',
     "not a finite decimal"),
    (b'{"exchange":"binance","symbol":"BTC-USDT","event_time_ms":1764000000000,"received_ns":1764000000000000000,"price":"1","bid":"1\\t2"}',
     "bid is not a finite decimal"),
])
def test_bad_transformed_records_are_rejected_with_a_reason(value, reason):
    with pytest.raises(BadRecord, match=reason):
        tick_copy_line(value, "binance")


@pytest.mark.parametrize("price, ok", [("0.000", False), ("0E+5", False), ("00", False), ("1e-3", False),
                                       ("0.0000001141", True), ("10", True), ("-0.5", False), ("+1", False),
                                       ("1.", False), (".5", False), ("Infinity", False), ("1_000", False)])
def test_price_must_be_a_positive_finite_decimal(price, ok):
    value = json.dumps({"exchange": "binance", "symbol": "BTC-USDT", "event_time_ms": MS, "received_ns": NS,
                        "price": price}).encode()
    if ok:
        assert tick_copy_line(value).split("\t")[4] == price
    else:
        with pytest.raises(BadRecord, match="price"):
            tick_copy_line(value)


@pytest.mark.parametrize("field, value", [("price", "1\n"), ("symbol", "BTC-USDT\n"), ("price", "1\t2"),
                                          ("bid", "2\n"), ("ask", "1\t2")])
def test_no_newline_or_tab_reaches_the_copy_text(field, value):
    # `$` matches before a trailing newline: the checks must hold for the whole string
    record = {"exchange": "binance", "symbol": "BTC-USDT", "event_time_ms": MS, "received_ns": NS, "price": "1"}
    record[field] = value
    with pytest.raises(BadRecord, match=field):
        tick_copy_line(json.dumps(record).encode())


def test_bool_is_not_an_integer():
    value = json.dumps({"exchange": "binance", "symbol": "BTC-USDT", "event_time_ms": MS, "received_ns": NS,
                        "price": "1", "sequence": True}).encode()
    with pytest.raises(BadRecord, match="sequence is not an integer"):
        tick_copy_line(value)


def test_events_merge_per_connection_with_first_disconnect_reason():
    evs = [PipelineEvent("kucoin", "c1", "heartbeat", NS + 50),
           PipelineEvent("kucoin", "c1", "connected", NS + 10),
           PipelineEvent("kucoin", "c1", "subscribed", NS + 20),
           PipelineEvent("kucoin", "c1", "disconnected", NS + 90, reason="later"),
           PipelineEvent("kucoin", "c1", "disconnected", NS + 80, reason="first"),
           PipelineEvent("kucoin", "c2", "heartbeat", NS + 5)]
    s = merge_events(evs)
    assert (s["c1"].connected_ns, s["c1"].subscribed_ns, s["c1"].last_seen_ns) == (NS + 10, NS + 20, NS + 90)
    assert (s["c1"].disconnected_ns, s["c1"].reason) == (NS + 80, "first")
    assert s["c2"].connected_ns is None and s["c2"].first_seen_ns == NS + 5


def test_a_sharded_connection_keeps_its_symbols():
    evs = [decode_event(PipelineEvent("binance", "c1", "connected", NS, detail={"symbols": ["AAA-USDT", "BB-USDT"]})
                        .to_json(), NS),
           PipelineEvent("binance", "c1", "heartbeat", NS + 5),
           PipelineEvent("binance", "c2", "connected", NS + 1, detail={"streams": 1})]
    s = merge_events(evs)
    assert s["c1"].symbols == ["AAA-USDT", "BB-USDT"] and s["c2"].symbols is None


def test_spool_events_are_not_sessions():
    evs = [PipelineEvent("binance", "binance-spool", "spool_full", NS),
           PipelineEvent("binance", "binance-spool", "spool_drained", NS + 5),
           PipelineEvent("binance", "c1", "connected", NS + 1)]
    assert set(merge_events(evs)) == {"c1"}


@pytest.mark.parametrize("value, reason", [
    (b"{}", "unknown_exchange"),
    (b"[1]", "not_an_object"),
    (b"{nope", "malformed_event:json"),
    (b'{"exchange":"x","conn_id":"c","kind":"connected","at_ns":1764000000000000000}', "unknown_exchange"),
    (b'{"exchange":"binance","conn_id":"c","kind":"exploded","at_ns":1764000000000000000}', "unknown_event_kind"),
    (b'{"exchange":"binance","conn_id":"","kind":"connected","at_ns":1764000000000000000}', "bad_conn_id"),
    (b'{"exchange":"binance","conn_id":"c","kind":"connected","at_ns":5}', "before_2009"),
    (b'{"exchange":"binance","conn_id":"c","kind":"connected","at_ns":"1764000000000000000"}', "at_ns_not_integer"),
    # a forged "connected" event far in the future (or year 2099) claims coverage that never existed
    (b'{"exchange":"binance","conn_id":"c","kind":"connected","at_ns":1764000600000000001}', "in_the_future"),
    (b'{"exchange":"binance","conn_id":"c","kind":"connected","at_ns":4070908800000000000}', "in_the_future"),
    (b'{"exchange":"binance","conn_id":"c","kind":"connected","at_ns":1764000000000000000,"detail":[1]}',
     "detail_not_an_object"),
    (b'{"exchange":"binance","conn_id":"c","kind":"connected","at_ns":1764000000000000000,'
     b'"detail":{"symbols":"BTC-USDT"}}', "symbols_not_canonical"),
    (b'{"exchange":"binance","conn_id":"c","kind":"connected","at_ns":1764000000000000000,'
     b'"detail":{"symbols":["BTC-USDT","x\');DROP TABLE ticks;--"]}}', "symbols_not_canonical"),
    (b'{"exchange":"binance","conn_id":"c","kind":"heartbeat","at_ns":1764000000000000000,'
     b'"detail":{"covered_until_ns":1764000000000000001}}', "covered_after_event"),
    (b'{"exchange":"binance","conn_id":"c","kind":"heartbeat","at_ns":1764000000000000000,'
     b'"detail":{"covered_until_ns":"1"}}', "covered_until_ns_not_integer"),
    (b"{" + b" " * (1 << 20) + b"}", "oversized_event"),
])
def test_bad_events_are_rejected(value, reason):
    # the loader's clock: NS (+ the 5 minutes an event may run ahead of it)
    with pytest.raises(BadRecord, match=reason):
        decode_event(value, NS)


def test_an_event_slightly_ahead_of_the_loader_clock_is_accepted():
    ev = decode_event(b'{"exchange":"binance","conn_id":"c","kind":"heartbeat","at_ns":1764000299000000000,'
                      b'"detail":{"covered_until_ns":1764000298000000000}}', NS)
    assert ev.at_ns == NS + 299 * 10**9 and merge_events([ev])["c"].covered_until_ns == NS + 298 * 10**9


class RecordingWriter:
    def __init__(self):
        self.calls = []

    def write(self, lines, days, sessions, dead_letters=()):
        from streaming.loader import BatchResult
        self.calls.append((list(lines), set(days), dict(sessions)))
        return BatchResult(ticks_in=len(lines), ticks_inserted=len(lines), sessions=len(sessions))

    def close(self):
        pass


def test_batch_routes_good_rows_to_db_bad_ones_to_dlq_then_commits():
    good = FakeMessage("binance_transformed_data", 1, 10, tick().to_json(), b"BTC-USDT")
    bad = FakeMessage("kucoin_transformed_data", 0, 4, b"garbage", b"X")
    ev = FakeMessage("pipeline_events", 0, 3, PipelineEvent("binance", "c9", "connected", NS).to_json())
    keyed = FakeMessage("pipeline_events", 0, 5, b"\x00garbage", b"binance")
    bad_ev = FakeMessage("pipeline_events", 0, 4, b'{"exchange":"kucoin","conn_id":"c","kind":"?","at_ns":1}')
    consumer, producer, writer = FakeConsumer(), FakeProducer(), RecordingWriter()
    loader = Loader(consumer, producer, writer, Metrics("load"), StopFlag())
    loader.process([good, bad, ev, bad_ev, keyed])
    (lines, days, sessions), = writer.calls
    assert len(lines) == 1 and days == {MS // 86_400_000} and list(sessions) == ["c9"]
    dlq = producer.by_topic("kucoin_dlq")
    assert [r[1] for r in dlq] == [b"garbage", bad_ev.value()]
    headers = dict(dlq[0][3])
    assert headers["reason"].startswith(b"loader: malformed JSON")
    assert (headers["source_topic"], headers["source_partition"], headers["source_offset"]) == \
        (b"kucoin_transformed_data", b"0", b"4")
    assert [r[1] for r in producer.by_topic("binance_dlq")] == [b"\x00garbage"]    # routed by its key
    assert consumer.commits == [[("binance_transformed_data", 1, 11), ("kucoin_transformed_data", 0, 5),
                                 ("pipeline_events", 0, 6)]]


def test_db_outage_is_retried_without_committing_until_it_succeeds():
    import psycopg2

    class FlakyWriter(RecordingWriter):
        fails = 2

        def write(self, lines, days, sessions, dead_letters=()):
            if self.fails:
                self.fails -= 1
                raise psycopg2.OperationalError("server closed the connection")
            return super().write(lines, days, sessions, dead_letters)

    consumer = FakeConsumer(assignment=[("binance_transformed_data", 0)])
    writer = FlakyWriter()
    loader = Loader(consumer, FakeProducer(), writer, Metrics("load"), StopFlag())
    import streaming.loader as mod
    mod_backoff = mod.backoff_delays
    mod.backoff_delays = lambda *a, **k: iter([0.0] * 10)
    try:
        loader.process([FakeMessage("binance_transformed_data", 0, 0, tick().to_json())])
    finally:
        mod.backoff_delays = mod_backoff
    assert len(writer.calls) == 1
    assert consumer.commits == [[("binance_transformed_data", 0, 1)]]
    assert len(consumer.paused) == 1 and len(consumer.resumed) == 1
