"""Archiver, pure parts: line format, deterministic bytes, object cutting and restart equivalence."""
import gzip
import json

import pytest

from streaming.archiver import (HOUR_NS, Archiver, ObjectCutter, Rotation, archive_line, gzip_bytes,
                                record_received_ns)
from streaming.consumer_loop import Metrics, StopFlag
from tests.unit.streaming.kafka_fakes import FakeConsumer, FakeMessage

T0 = 1_764_000_000_000_000_000 - (1_764_000_000_000_000_000 % HOUR_NS)   # an hour start
TOPIC = "binance_raw_data"


def hdrs(ns):
    return [("received_ns", str(ns).encode()), ("conn_id", b"c1"), ("exchange", b"binance")]


def test_line_holds_the_frame_headers_and_times():
    line = archive_line(TOPIC, 2, 41, b"c1", b'{"e":"x"}', hdrs(T0 + 1500), 1764000000123, T0 + 1500)
    obj = json.loads(line)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert obj["frame"] == '{"e":"x"}' and obj["frame_encoding"] == "utf-8"
    assert (obj["topic"], obj["partition"], obj["offset"]) == (TOPIC, 2, 41)
    assert obj["received_ns"] == T0 + 1500 and obj["received_at"].endswith("Z")
    assert obj["headers"][0] == ["received_ns", str(T0 + 1500)]
    assert list(obj) == sorted(obj)


def test_non_utf8_frames_are_kept_as_base64():
    import base64
    raw = b"\xff\xfe\x00binary"
    obj = json.loads(archive_line(TOPIC, 0, 0, None, raw, [], 0, T0))
    assert obj["frame_encoding"] == "base64" and base64.b64decode(obj["frame"]) == raw
    assert obj["key"] is None


def test_same_records_give_the_same_bytes():
    lines = [archive_line(TOPIC, 0, i, b"k", b"frame%d" % i, hdrs(T0 + i), 0, T0 + i) for i in range(100)]
    a, b = gzip_bytes(b"".join(lines)), gzip_bytes(b"".join(lines))
    assert a == b and gzip.decompress(a) == b"".join(lines)


def test_received_time_falls_back_to_kafka_timestamp():
    ts_ms = T0 // 1_000_000 + 7
    assert record_received_ns([("received_ns", str(T0).encode())], ts_ms) == T0
    assert record_received_ns([("received_ns", b"junk")], ts_ms) == ts_ms * 1_000_000
    assert record_received_ns(None, ts_ms) == ts_ms * 1_000_000


@pytest.mark.parametrize("headers, ts_ms", [
    ([("received_ns", str(2 ** 64).encode())], 0),          # beyond int64, and no usable Kafka time
    ([("received_ns", b"123")], -5),                        # 1970, negative Kafka time
    ([("received_ns", b"1")], 10 ** 15),                    # Kafka time in the year 33658
    ([("received_ns", b"1"), ("received_ns", b"2")], 10 ** 12),
])
def test_a_poison_receive_time_is_filed_inside_the_epoch_range(headers, ts_ms):
    from common.codec.limits import EPOCH_CEILING_NS, EPOCH_FLOOR_NS

    ns = record_received_ns(headers, ts_ms)
    assert EPOCH_FLOOR_NS <= ns < EPOCH_CEILING_NS
    line = archive_line(TOPIC, 0, 1, b"\xff", b"\xfe", headers, ts_ms, ns)     # and it archives
    assert json.loads(line)["received_ns"] == ns


def cut(records, rotation, start=0, clock=None):
    """Feed (offset, received_ns, size) records from index `start`; return [(first, last)] of all objects."""
    cutter = ObjectCutter(rotation, clock=clock or (lambda: 0.0))
    for off, ns, size in records[start:]:
        cutter.add(TOPIC, 0, off, ns, b"x" * size)
    cutter.close_all()
    return [(o.first_offset, o.last_offset) for o in cutter.take_closed()]


RECORDS = [(i, T0 + HOUR_NS - 50 * 1_000_000_000 + i * 1_000_000_000, 10 + (i % 7) * 30) for i in range(120)]


def test_objects_close_on_count_bytes_and_hour():
    assert cut([(i, T0, 1) for i in range(10)], Rotation(max_records=4, max_bytes=10**9)) == [(0, 3), (4, 7), (8, 9)]
    assert cut([(i, T0, 40) for i in range(5)], Rotation(max_records=100, max_bytes=100)) == [(0, 2), (3, 4)]
    # records 0..49 in the first hour, 50.. in the next: never one object across the hour
    objs = cut(RECORDS, Rotation(max_records=1000, max_bytes=10**9))
    assert objs == [(0, 49), (50, 119)]


@pytest.mark.parametrize("rotation", [Rotation(7, 10**9), Rotation(1000, 400), Rotation(13, 900)])
def test_a_restart_at_any_object_boundary_cuts_the_same_objects(rotation):
    full = cut(RECORDS, rotation)
    for first, _last in full:
        assert cut(RECORDS, rotation, start=first) == [o for o in full if o[0] >= first]


def test_a_late_record_of_the_previous_hour_does_not_split_objects():
    records = [(0, T0 + HOUR_NS - 5, 1), (1, T0 + HOUR_NS + 5, 1), (2, T0 + HOUR_NS - 1, 1), (3, T0 + HOUR_NS + 9, 1)]
    assert cut(records, Rotation(100, 10**9)) == [(0, 0), (1, 3)]


def test_age_closes_an_object_early():
    now = [0.0]
    cutter = ObjectCutter(Rotation(1000, 10**9, max_age_s=5), clock=lambda: now[0])
    cutter.add(TOPIC, 0, 0, T0, b"a")
    cutter.close_aged()
    assert cutter.take_closed() == []
    now[0] = 6.0
    cutter.close_aged()
    assert [o.last_offset for o in cutter.take_closed()] == [0]


class FakeS3:
    def __init__(self, failures=0):
        self.failures = failures
        self.objects = {}
        self.attempts = 0

    def put_object(self, Bucket, Key, Body, **_kw):
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("S3 is down")
        self.objects[Key] = Body


def raw_msgs(n, partition=0):
    return [FakeMessage(TOPIC, partition, i, b'{"i":%d}' % i, b"c1", hdrs(T0 + i), 0) for i in range(n)]


def make_archiver(consumer, s3, rotation):
    arch = Archiver(consumer, s3, "bucket", Metrics("archive"), StopFlag(), rotation=rotation)
    arch.assigned = {(TOPIC, 0), (TOPIC, 1)}
    return arch


def test_each_object_is_committed_right_after_its_upload(monkeypatch):
    import streaming.archiver as mod
    monkeypatch.setattr(mod, "backoff_delays", lambda *a, **k: iter([0.0] * 100))
    consumer, s3 = FakeConsumer(assignment=[(TOPIC, 0)]), FakeS3(failures=3)
    arch = make_archiver(consumer, s3, Rotation(4, 10**9, 3600))
    arch.add(raw_msgs(10))
    arch.flush_closed()
    assert sorted(s3.objects) == [
        f"raw/exchange=binance/date=2025-11-24/hour={(T0 // HOUR_NS) % 24:02d}/{TOPIC}+0+0.jsonl.gz",
        f"raw/exchange=binance/date=2025-11-24/hour={(T0 // HOUR_NS) % 24:02d}/{TOPIC}+0+4.jsonl.gz"]
    assert consumer.commits == [[(TOPIC, 0, 4)], [(TOPIC, 0, 8)]]
    assert s3.attempts == 5 and len(consumer.paused) == 1   # 3 failures retried, partitions paused
    body = gzip.decompress(s3.objects[sorted(s3.objects)[1]])
    assert [json.loads(l)["offset"] for l in body.splitlines()] == [4, 5, 6, 7]


def test_revoked_partition_is_neither_uploaded_nor_committed():
    consumer, s3 = FakeConsumer(), FakeS3()
    arch = make_archiver(consumer, s3, Rotation(4, 10**9, 3600))
    arch.add(raw_msgs(6, partition=1))
    from confluent_kafka import TopicPartition
    arch._on_revoke(consumer, [TopicPartition(TOPIC, 1)])
    arch.add(raw_msgs(2, partition=1))       # stragglers of a revoked partition are ignored
    arch.cutter.close_all()
    arch.flush_closed()
    assert s3.objects == {} and consumer.commits == []


@pytest.mark.parametrize("key, value, headers", [
    (None, b"\xff\x00abc", [("h", b"\xff"), ("received_ns", b"12"), ("n", None)]),
    (b'k"\\', '{"a":"\u00e9\u2028\\n"}'.encode(), []),
    (b"c1", b"", [("conn_id", b"tab\there")]),
])
def test_hand_written_line_is_canonical_sorted_ascii_json(key, value, headers):
    line = archive_line(TOPIC, 1, 2, key, value, headers, 7, T0 + 123)
    obj = json.loads(line)
    assert json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n" == line
    assert obj["received_at"].endswith(".000000123Z")


def test_giving_up_at_shutdown_never_commits_past_the_missing_object(monkeypatch):
    import streaming.archiver as mod
    monkeypatch.setattr(mod, "backoff_delays", lambda *a, **k: iter([0.01] * 1000))

    class FirstObjectDown(FakeS3):
        def put_object(self, Bucket, Key, Body, **kw):
            if Key.endswith("+0+0.jsonl.gz"):
                raise ConnectionError("this one never gets through")
            super().put_object(Bucket, Key, Body, **kw)

    consumer, s3 = FakeConsumer(assignment=[(TOPIC, 0)]), FirstObjectDown()
    arch = make_archiver(consumer, s3, Rotation(4, 10**9, 3600))
    arch.stop_grace_s = 0.05
    arch.add(raw_msgs(10))
    arch.cutter.close_all()
    arch.stop.set()                           # shutting down: give up after the grace period
    arch.flush_closed()
    assert s3.objects == {} and consumer.commits == []


class UnreadableHeaders(FakeMessage):
    def headers(self):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")   # what a bad header name does


def test_a_record_whose_headers_cannot_be_read_is_still_archived_with_its_bytes():
    import base64

    arch = make_archiver(FakeConsumer(), None, Rotation(max_records=2))
    bad = UnreadableHeaders(TOPIC, 0, 5, b"\x00frame", b"key", None, T0 // 1_000_000)
    good = FakeMessage(TOPIC, 0, 6, b"frame", b"k", hdrs(T0 + 1), T0 // 1_000_000)
    arch.add([bad, good])
    (obj,) = arch.cutter.take_closed()
    first, second = (json.loads(line) for line in obj.lines)
    assert base64.b64decode(first["frame"]) == b"\x00frame" and "UnicodeDecodeError" in first["archive_error"]
    assert (first["offset"], second["offset"], second["frame"]) == (5, 6, "frame")
