"""Archiver: raw topics -> S3 gzip JSON lines (`cryptopipe archive`, group `archiver`).

Objects: `raw/exchange=<ex>/date=YYYY-MM-DD/hour=HH/<topic>+<partition>+<first_offset>.jsonl.gz`
(common.s3.raw_archive_key), one line per Kafka record.

Why a crash never duplicates nor loses a record:
- An object is closed by record count, by uncompressed bytes, or when a record's receive hour
  is later than the object's first record's hour — all functions of the records read from the
  object's first offset, so a restart from the committed offset cuts the same objects. Age
  closes an object early (so a quiet partition still reaches S3); only the object in flight can
  be affected by that, see next point.
- Per partition, objects are uploaded in offset order and each upload is followed by the commit
  of its end offset before the next upload. So at most one object per partition exists in S3
  beyond the committed offset; a restart starts its first object at the committed offset, i.e.
  at that object's first offset, and overwrites the same key with the same bytes (or, if age cut
  it differently, a superset or a prefix whose remainder lands in the next object). Either
  way every offset is in exactly one object.
- Lines are JSON with sorted keys and the gzip header has mtime 0: the same records give the
  same bytes.
- S3 down: the loop pauses its partitions and retries with backoff (still polling, so it keeps
  its group membership); nothing more is read meanwhile, so memory stays bounded.
"""
from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from confluent_kafka import TopicPartition

from common.codec import BadRecord
from common.codec.raw import fallback_received_ns, read_raw_meta
from common.kafka import make_consumer
from common.models import ns_to_dt
from common.s3 import make_s3_client, raw_archive_key
from common.settings import get_settings, metrics_port
from common.topics import EXCHANGES, exchange_of_topic, raw_topic
from streaming.consumer_loop import (LagReporter, Metrics, StopFlag, backoff_delays, base_parser, commit_sync,
                                     log_consumer_errors, safe_reason, setup_logging, split_errors,
                                     start_metrics_server)

log = logging.getLogger("streaming.archiver")

COMPONENT = "archive"
DEFAULT_GROUP = "archiver"
DEFAULT_METRICS_PORT = 9105
HOUR_NS = 3600 * 1_000_000_000


@dataclass(frozen=True)
class Rotation:
    max_records: int = 50_000
    max_bytes: int = 16 * 1024 * 1024      # uncompressed
    max_age_s: float = 60.0


def _text(value: bytes | None) -> tuple[str | None, str]:
    if value is None:
        return None, "null"
    try:
        return value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii"), "base64"


def record_received_ns(headers: list | None, kafka_ts_ms: int) -> int:
    """The receive time a raw record is filed under: its `received_ns` header, or, when that is
    missing or unusable (not ours, or corrupt: the transformer dead-letters such a record), the
    Kafka timestamp clamped into the epoch range. A pure function of the record, so a replay cuts
    the same objects; the record itself is archived whatever its headers say (the archive is raw)."""
    try:
        return read_raw_meta(headers).received_ns
    except BadRecord:
        return fallback_received_ns(kafka_ts_ms)


_quote = json.encoder.encode_basestring_ascii     # the C escaper json.dumps uses: ASCII-only output


def _json_text(value: bytes | None) -> tuple[str, str]:
    """(JSON literal, encoding name) of a record's key or value."""
    text, encoding = _text(value)
    return ("null" if text is None else _quote(text)), _quote(encoding)


_last_second = [None, ""]    # records arrive in time order: format each second once


def _iso_z(ns: int) -> str:
    seconds, rem = divmod(ns, 1_000_000_000)
    if _last_second[0] != seconds:
        _last_second[0] = seconds
        _last_second[1] = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{_last_second[1]}{rem:09d}Z"


def archive_line(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                 headers: list | None, kafka_ts_ms: int, received_ns: int) -> bytes:
    """One record as one JSON line: keys in sorted order, ASCII only, so identical input gives
    identical bytes. Written by hand (the hot path: ~3x faster than json.dumps(sort_keys=True));
    every string goes through json's own escaper, so the line is valid JSON."""
    frame, frame_enc = _json_text(value)
    key_text, key_enc = _json_text(key)
    hdrs = []
    for name, hvalue in headers or ():
        text, enc = _text(hvalue)
        literal = "null" if text is None else _quote(text)
        if enc == "base64":
            literal = '{"base64":' + literal + "}"
        hdrs.append("[" + _quote(name) + "," + literal + "]")
    return ('{"frame":' + frame + ',"frame_encoding":' + frame_enc + ',"headers":[' + ",".join(hdrs) + "]"
            + ',"kafka_timestamp_ms":' + str(int(kafka_ts_ms)) + ',"key":' + key_text + ',"key_encoding":' + key_enc
            + ',"offset":' + str(int(offset)) + ',"partition":' + str(int(partition))
            + ',"received_at":"' + _iso_z(received_ns) + '","received_ns":' + str(int(received_ns))
            + ',"topic":' + _quote(topic) + "}\n").encode("ascii")


def fallback_line(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                  received_ns: int, exc: Exception) -> bytes:
    """The line of a record that `archive_line` could not write: key and value base64, headers
    left out (they are what failed), the reason kept. Deterministic for the same record."""
    b64 = lambda b: None if b is None else base64.b64encode(b).decode("ascii")  # noqa: E731
    return (json.dumps({"archive_error": safe_reason(f"{type(exc).__name__}: {exc}"), "frame": b64(value),
                        "frame_encoding": "base64", "key": b64(key), "key_encoding": "base64",
                        "offset": int(offset), "partition": int(partition), "received_ns": int(received_ns),
                        "topic": topic}, sort_keys=True) + "\n").encode("ascii")


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


@dataclass
class OpenObject:
    topic: str
    partition: int
    first_offset: int
    first_received_ns: int
    opened_at: float
    last_offset: int = -1
    generation: int = 0            # the archiver's ownership epoch of the partition when opened
    lines: list = field(default_factory=list)
    nbytes: int = 0

    @property
    def hour(self) -> int:
        return self.first_received_ns // HOUR_NS

    @property
    def count(self) -> int:
        return len(self.lines)

    def key(self) -> str:
        return raw_archive_key(exchange_of_topic(self.topic), self.topic, self.partition, self.first_offset,
                               ns_to_dt(self.first_received_ns))

    def body(self) -> bytes:
        return gzip_bytes(b"".join(self.lines))


class ObjectCutter:
    """Cuts a partition's record stream into objects (pure: no Kafka, no S3)."""

    def __init__(self, rotation: Rotation, clock=time.monotonic):
        self.rotation = rotation
        self.clock = clock
        self.open: dict[tuple[str, int], OpenObject] = {}
        self.closed: list[OpenObject] = []

    def add(self, topic: str, partition: int, offset: int, received_ns: int, line: bytes,
            generation: int = 0) -> None:
        tp = (topic, partition)
        obj = self.open.get(tp)
        # a record of a later hour closes the object (its key names the first record's hour); a
        # slightly late record of an earlier hour (two connections sharing a partition) stays in it
        if obj is not None and received_ns // HOUR_NS > obj.hour:
            self._close(tp)
            obj = None
        if obj is None:
            obj = self.open[tp] = OpenObject(topic, partition, offset, received_ns, self.clock(),
                                             generation=generation)
        obj.lines.append(line)
        obj.nbytes += len(line)
        obj.last_offset = offset
        if obj.count >= self.rotation.max_records or obj.nbytes >= self.rotation.max_bytes:
            self._close(tp)

    def _close(self, tp) -> None:
        self.closed.append(self.open.pop(tp))

    def close_aged(self) -> None:
        now = self.clock()
        for tp in [tp for tp, o in self.open.items() if now - o.opened_at >= self.rotation.max_age_s]:
            self._close(tp)

    def close_all(self) -> None:
        for tp in list(self.open):
            self._close(tp)

    def forget(self, tps: set[tuple[str, int]]) -> None:
        """Drop everything of partitions no longer ours: their new owner re-reads them."""
        for tp in tps:
            self.open.pop(tp, None)
        self.closed = [o for o in self.closed if (o.topic, o.partition) not in tps]

    def take_closed(self) -> list[OpenObject]:
        out, self.closed = self.closed, []
        return out

    def buffered_bytes(self) -> int:
        return sum(o.nbytes for o in self.open.values()) + sum(o.nbytes for o in self.closed)


class Archiver:
    def __init__(self, consumer, s3, bucket: str, metrics: Metrics, stop: StopFlag,
                 rotation: Rotation = Rotation(), topics: list[str] | None = None,
                 batch_size: int = 5000, poll_timeout: float = 0.5, stop_grace_s: float = 10.0):
        self.consumer = consumer
        self.s3 = s3
        self.bucket = bucket
        self.metrics = metrics
        self.stop = stop
        self.cutter = ObjectCutter(rotation)
        self.topics = topics or [raw_topic(e) for e in EXCHANGES]
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.stop_grace_s = stop_grace_s
        self.assigned: set[tuple[str, int]] = set()
        self.generations: dict[tuple[str, int], int] = {}   # bumped on every revoke
        self.lag = LagReporter(metrics)
        self._held: list = []
        self.objects_written = 0

    # -- rebalance callbacks (run inside consume(), on this thread)
    def _on_assign(self, _consumer, partitions) -> None:
        self.assigned.update((p.topic, p.partition) for p in partitions)
        log.info("assigned %s", sorted(self.assigned))

    def _on_revoke(self, _consumer, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self.assigned -= gone
        for tp in gone:
            self.generations[tp] = self.generations.get(tp, 0) + 1
        self.cutter.forget(gone)
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]
        log.info("revoked %s", sorted(gone))

    def add(self, messages: list) -> None:
        per_topic: dict[str, int] = {}
        assigned, generations, cut = self.assigned, self.generations, self.cutter.add
        for m in messages:
            topic, partition = m.topic(), m.partition()
            if (topic, partition) not in assigned:
                continue
            offset = m.offset()
            try:
                headers = m.headers()
                _kind, ts_ms = m.timestamp()
                received_ns = record_received_ns(headers, ts_ms)
                line = archive_line(topic, partition, offset, m.key(), m.value(), headers, ts_ms, received_ns)
            except Exception as exc:  # noqa: BLE001 - no record may stop the archiver: keep its bytes
                log.exception("archiving %s[%d]@%d the plain way failed; keeping its bytes", topic, partition, offset)
                received_ns = fallback_received_ns(m.timestamp()[1])
                line = fallback_line(topic, partition, offset, m.key(), m.value(), received_ns, exc)
            cut(topic, partition, offset, received_ns, line, generations.get((topic, partition), 0))
            per_topic[topic] = per_topic.get(topic, 0) + 1
        for topic, n in per_topic.items():
            self.metrics.consumed(topic, n)

    def flush_closed(self) -> int:
        """Upload the closed objects in order, committing each one's end offset after its upload."""
        written = 0
        abandoned: set[tuple[str, int]] = set()
        for obj in self.cutter.take_closed():
            tp = (obj.topic, obj.partition)
            if tp in abandoned or not self._owned(obj):
                continue          # never commit past an object that is not in S3
            started = time.monotonic()
            if not self._upload_with_retry(obj):
                abandoned.add(tp)
                continue
            commit_sync(self.consumer, [TopicPartition(obj.topic, obj.partition, obj.last_offset + 1)])
            self.objects_written += 1
            written += 1
            self.metrics.wrote("objects", 1)
            self.metrics.wrote("records", obj.count)
            self.metrics.batch(obj.count, time.monotonic() - started)
        return written

    def _owned(self, obj: OpenObject) -> bool:
        tp = (obj.topic, obj.partition)
        return tp in self.assigned and self.generations.get(tp, 0) == obj.generation

    def _upload_with_retry(self, obj: OpenObject) -> bool:
        key = obj.key()
        body = obj.body()
        delays = backoff_delays(0.5, 10.0)
        paused = False
        first_failure = None
        try:
            while True:
                try:
                    self.s3.put_object(Bucket=self.bucket, Key=key, Body=body,
                                       ContentType="application/x-ndjson",
                                       Metadata={"first-offset": str(obj.first_offset),
                                                 "last-offset": str(obj.last_offset),
                                                 "records": str(obj.count)})
                    return True
                except Exception as exc:  # botocore raises many types; all mean "not stored"
                    now = time.monotonic()
                    first_failure = first_failure or now
                    if self.stop.is_set() and now - first_failure > self.stop_grace_s:
                        log.error("giving up %s at shutdown (not committed; the next run rewrites it)", key)
                        return False
                    delay = next(delays)
                    log.warning("upload of %s failed (%s); retrying in %.1fs", key, safe_reason(exc, 200), delay)
                    self.metrics.retried()
                    if not paused:
                        self.consumer.pause([TopicPartition(t, p) for t, p in self.assigned])
                        paused = True
                    self._idle(delay)
                    if not self._owned(obj):
                        log.info("partition %s[%d] revoked during retry; its new owner rewrites %s",
                                 obj.topic, obj.partition, key)
                        return False
        finally:
            if paused:
                self.consumer.resume([TopicPartition(t, p) for t, p in self.assigned])

    def _idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._held.extend(self.consumer.consume(100, timeout=min(0.5, left)))

    def run(self) -> int:
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        self.metrics.up.labels(COMPONENT).set(1)
        log.info("archiving %s to s3://%s/raw/", ", ".join(self.topics), self.bucket)
        try:
            while not self.stop.is_set():
                held, self._held = self._held, []
                messages = held + self.consumer.consume(self.batch_size, timeout=self.poll_timeout)
                good, errors = split_errors(messages)
                log_consumer_errors(errors, COMPONENT)
                self.add(good)
                self.cutter.close_aged()
                self.flush_closed()
                self.lag.maybe_report(self.consumer)
            # graceful stop: whatever is buffered goes to S3 now
            self.cutter.close_all()
            self.flush_closed()
        finally:
            self.metrics.up.labels(COMPONENT).set(0)
            self.consumer.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    p = base_parser("cryptopipe archive", "raw topics -> S3 (gzip JSON lines)", DEFAULT_GROUP,
                    metrics_port(DEFAULT_METRICS_PORT), poll_timeout=0.5)   # off the latency path
    p.add_argument("--topic-suffix", default="", help="suffix of every topic name (tests)")
    p.add_argument("--max-records", type=int, default=Rotation.max_records, help="records per object")
    p.add_argument("--max-bytes", type=int, default=Rotation.max_bytes, help="uncompressed bytes per object")
    p.add_argument("--max-age", type=float, default=None,
                   help="seconds an object may stay open before it is uploaded "
                        "(default: ARCHIVE_MAX_AGE_SECONDS, 60)")
    p.add_argument("--nice", type=int, default=10, choices=range(0, 20), metavar="0..19",
                   help="lower this process's CPU priority by N (default 10): the archive is off the "
                        "latency path, and its bursts (gzip and upload at each rotation) must not delay "
                        "ticks on their way to Postgres when the cores are busy")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    if args.nice:
        os.nice(args.nice)
    stop = StopFlag().install()
    metrics = Metrics(COMPONENT)
    start_metrics_server(args.metrics_port)
    topics = [raw_topic(e) + args.topic_suffix for e in EXCHANGES]
    max_age = args.max_age if args.max_age is not None else get_settings().archive_max_age_seconds
    if not max_age > 0:
        p.error(f"--max-age must be positive, got {max_age}")
    archiver = Archiver(make_consumer(args.group), make_s3_client(), get_settings().s3_bucket, metrics, stop,
                        rotation=Rotation(args.max_records, args.max_bytes, max_age), topics=topics,
                        batch_size=args.batch_size, poll_timeout=args.poll_timeout)
    return archiver.run()


if __name__ == "__main__":
    raise SystemExit(main())
