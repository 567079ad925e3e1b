"""Loader, pure parts: which transformed records and pipeline events it accepts, and how."""

import pytest

from common.codec import BadRecord
from common.codec.events import decode_event
from common.codec.ticks import encode_batches, tick_line
from common.models import PipelineEvent
from streaming.consumer_loop import Metrics, StopFlag
from streaming.loader import Loader, merge_events
from tests.unit.common.test_codec_ticks import MS, NS, tick  # noqa: F401 - the same sample tick
from tests.unit.streaming.kafka_fakes import FakeConsumer, FakeMessage, FakeProducer


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


def ticks_record(*ticks):
    """The value and headers of one ticks.v1 record."""
    ((value, headers),) = encode_batches([tick_line(t) for t in ticks])
    return value, headers


def ticks_message(partition, offset, *ticks):
    value, headers = ticks_record(*ticks)
    return FakeMessage("binance_transformed_data", partition, offset, value, None, headers)


class RecordingWriter:
    def __init__(self):
        self.calls = []
        self.offsets = []

    def write(self, batch, offsets=None):
        from streaming.loader import BatchResult
        self.calls.append((list(batch.lines), set(batch.days), dict(batch.sessions)))
        self.offsets.append(offsets)
        return BatchResult(ticks_in=len(batch.lines), ticks_inserted=len(batch.lines), sessions=len(batch.sessions))

    def stored_offsets(self, group, partitions):
        return {}

    def close(self):
        pass


def test_batch_routes_good_rows_to_db_bad_ones_to_dlq_then_commits():
    good = ticks_message(1, 10, tick())
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
    assert headers["reason"].startswith(b"loader: unknown_format")          # no ticks.v1 header
    assert (headers["source_topic"], headers["source_partition"], headers["source_offset"]) == \
        (b"kucoin_transformed_data", b"0", b"4")
    assert [r[1] for r in producer.by_topic("binance_dlq")] == [b"\x00garbage"]    # routed by its key
    assert consumer.commits == [[("binance_transformed_data", 1, 11), ("kucoin_transformed_data", 0, 5),
                                 ("pipeline_events", 0, 6)]]


def test_db_outage_is_retried_without_committing_until_it_succeeds():
    import psycopg2

    class FlakyWriter(RecordingWriter):
        fails = 2

        def write(self, batch, offsets=None):
            if self.fails:
                self.fails -= 1
                raise psycopg2.OperationalError("server closed the connection")
            return super().write(batch, offsets)

    consumer = FakeConsumer(assignment=[("binance_transformed_data", 0)])
    writer = FlakyWriter()
    loader = Loader(consumer, FakeProducer(), writer, Metrics("load"), StopFlag())
    import streaming.loader.loop as mod
    mod_backoff = mod.backoff_delays
    mod.backoff_delays = lambda *a, **k: iter([0.0] * 10)
    try:
        loader.process([ticks_message(0, 0, tick())])
    finally:
        mod.backoff_delays = mod_backoff
    assert len(writer.calls) == 1
    assert consumer.commits == [[("binance_transformed_data", 0, 1)]]
    assert len(consumer.paused) == 1 and len(consumer.resumed) == 1
