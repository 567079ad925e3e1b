"""KafkaSink with a fake producer: spooling when the broker stops acknowledging, ordered replay,
spool full = backpressure + event, close saves what was not acknowledged."""
from __future__ import annotations

import time

from streaming.extractor.events import Events
from streaming.extractor.sink import KafkaSink
from streaming.extractor.spool import Record, Spool


class FakeProducer:
    """Acknowledges produced records on poll() while `up`; keeps them while down."""

    def __init__(self):
        self.up = True
        self.queue: list = []
        self.log: list[bytes] = []          # values in the order the 'broker' stored them
        self.max_queue = 10_000

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        if len(self.queue) >= self.max_queue:
            raise BufferError("queue full")
        self.queue.append((topic, value, on_delivery))

    def poll(self, timeout=0):
        if not self.up:
            if timeout:
                time.sleep(min(timeout, 0.01))
            return 0
        queue, self.queue = self.queue, []
        for topic, value, cb in queue:
            self.log.append(value)
            cb(None, None)
        return len(queue)

    def flush(self, timeout=0):
        self.poll(0)
        return len(self.queue)

    def __len__(self):
        return len(self.queue)


def rec(i: int) -> Record:
    return Record("kucoin_raw_data", b"c", b"frame-%06d" % i, [("received_ns", b"1")])


def make(tmp_path, **kw):
    producer = FakeProducer()
    spool = Spool(tmp_path / "spool", max_bytes=kw.pop("max_bytes", 1 << 20), reserve_bytes=4096)
    calls = {"full": 0, "drained": []}
    sink = KafkaSink(producer, spool, stuck_after_s=kw.pop("stuck_after_s", 0.05),
                     on_spool_full=lambda: calls.__setitem__("full", calls["full"] + 1),
                     on_spool_drained=lambda n: calls["drained"].append(n), **kw)
    return sink, producer, spool, calls


def test_direct_when_broker_acknowledges(tmp_path):
    sink, producer, spool, _ = make(tmp_path)
    for i in range(100):
        assert sink.offer(rec(i))
    sink.poll()
    assert producer.log == [rec(i).value for i in range(100)]
    assert spool.empty() and not sink.spooling and sink.delivered == 100


def test_outage_spools_then_replays_in_order(tmp_path):
    sink, producer, spool, calls = make(tmp_path)
    sink.offer(rec(0))
    sink.poll()
    producer.up = False
    for i in range(1, 20):                                # in librdkafka's queue, unacknowledged
        assert sink.offer(rec(i))
    time.sleep(0.06)                                      # older than stuck_after_s: broker is away
    for i in range(20, 500):
        assert sink.offer(rec(i))
    assert sink.spooling and spool.depth_bytes > 0
    producer.up = True
    for _ in range(50):
        sink.poll()
        if not sink.spooling:
            break
    assert not sink.spooling and spool.empty()
    assert producer.log == [rec(i).value for i in range(500)]
    assert calls["drained"] == [480] and calls["full"] == 0


def test_new_records_wait_behind_the_spool(tmp_path):
    sink, producer, spool, _ = make(tmp_path, replay_batch=10)
    producer.up = False
    sink.offer(rec(0))
    time.sleep(0.06)
    for i in range(1, 50):
        sink.offer(rec(i))
    producer.up = True
    for i in range(50, 80):                               # arrive while the spool drains
        sink.offer(rec(i))
    for _ in range(100):
        sink.poll()
    assert producer.log == [rec(i).value for i in range(80)]


def test_spool_full_refuses_and_reports_once_events_still_fit(tmp_path):
    sink, producer, spool, calls = make(tmp_path, max_bytes=3000)
    producer.up = False
    sink.offer(rec(0))
    time.sleep(0.06)
    accepted = 1
    while sink.offer(rec(accepted)):
        accepted += 1
    assert not sink.offer(rec(accepted)) and sink.full
    assert calls["full"] == 1                             # reported once per episode
    events = Events("kucoin", sink)
    events.emit("spool_full", "-", "spool_full")          # uses the reserve
    producer.up = True
    for _ in range(100):
        sink.poll()
    assert not sink.full and not sink.spooling
    assert producer.log[:accepted] == [rec(i).value for i in range(accepted)]
    assert b'"kind":"spool_full"' in producer.log[-1]


def test_close_saves_unacknowledged_to_front_of_spool_and_next_process_replays(tmp_path):
    sink, producer, spool, _ = make(tmp_path)
    producer.up = False
    for i in range(5):
        sink.offer(rec(i))
    time.sleep(0.06)
    for i in range(5, 12):
        sink.offer(rec(i))                                # spooled behind 0..4
    saved = sink.close(timeout=0.2)
    assert saved == 5
    # a new process: it finds the spool and replays before anything new
    sink2, producer2, _, calls2 = make(tmp_path)
    assert sink2.spooling
    sink2.offer(rec(12))
    for _ in range(20):
        sink2.poll()
    assert producer2.log == [rec(i).value for i in range(13)]


def test_buffer_error_switches_to_spool(tmp_path):
    sink, producer, spool, _ = make(tmp_path, stuck_after_s=60)
    producer.up = False
    producer.max_queue = 3
    for i in range(10):
        assert sink.offer(rec(i))
    assert sink.spooling and len(producer.queue) == 3
    producer.up = True
    for _ in range(20):
        sink.poll()
    assert producer.log == [rec(i).value for i in range(10)]


def test_failed_replay_delivery_keeps_the_cursor(tmp_path):
    sink, producer, spool, _ = make(tmp_path)
    producer.up = False
    sink.offer(rec(0))
    time.sleep(0.06)
    for i in range(1, 6):
        sink.offer(rec(i))
    # the broker answers the first direct record, then fails every replayed one once
    producer.up = True
    sink.poll()                                           # delivers 0, replays 1..5 into the queue
    queue, producer.queue = producer.queue, []
    for _, _, cb in queue:
        cb("KafkaError{fatal}", None)
    sink.poll()
    for _ in range(10):
        sink.poll()
    assert producer.log == [rec(i).value for i in range(6)]
    assert spool.empty() and not sink.spooling


def test_record_kafka_refuses_is_kept_on_disk_and_does_not_block(tmp_path):
    from confluent_kafka import KafkaError, KafkaException

    from streaming.extractor.spool import _decode_at

    class Refusing(FakeProducer):
        def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
            if len(value) > 100:
                raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
            super().produce(topic, value, key, headers, on_delivery)

    sink, _, spool, _ = make(tmp_path)
    sink.producer = producer = Refusing()
    big = Record("binance_raw_data", b"c", b"x" * 500, [])
    assert sink.offer(rec(0)) and sink.offer(big) and sink.offer(rec(1))
    sink.poll()
    assert producer.log == [rec(0).value, rec(1).value] and not sink.spooling
    kept, _ = _decode_at((spool.dir / "rejected.bin").read_bytes(), 0)
    assert kept.value == big.value
