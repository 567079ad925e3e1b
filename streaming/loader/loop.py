"""The loader's loop (`cryptopipe load`, group `loader`): consume a batch, write it in one Postgres
transaction with the Kafka offsets it covers, then commit those offsets to Kafka too (for lag
monitoring; Postgres is the source of truth for where the loader is).

Exactly-once without per-row merges: when the loader is given a partition, it seeks to the offset
stored in `loader_offsets` (where its last durable batch ended), so nothing stored is read again;
a batch whose offsets are already stored (a zombie after a rebalance) is rolled back whole
(writer.Replayed) and the loader seeks again. Bad records go to their exchange's DLQ (stage
`load`) before the offsets move; dead letters are recorded in `dlq_records`.
"""
from __future__ import annotations

import logging
import time

import psycopg2
from confluent_kafka import TopicPartition

from common.codec.dlq import dead_letter as build_dead_letter
from common.kafka import make_consumer, make_producer
from common.settings import get_settings, metrics_port
from common.topics import EXCHANGES, PIPELINE_EVENTS, dlq_topic, exchange_of_topic, transformed_topic
from streaming.consumer_loop import (LagReporter, Metrics, StopFlag, advance_past_markers, backoff_delays,
                                     base_parser, commit_sync, log_consumer_errors, next_offsets, safe_reason,
                                     setup_logging, split_errors, start_metrics_server)

from .records import Batch, sort_batch
from .writer import BatchResult, Offsets, Replayed, TickWriter

log = logging.getLogger("streaming.loader")

COMPONENT = "load"
DEFAULT_GROUP = "loader"
DEFAULT_METRICS_PORT = 9104

_RETRYABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.errors.DeadlockDetected,
              psycopg2.errors.SerializationFailure, psycopg2.errors.UndefinedTable,
              psycopg2.errors.CheckViolation)


class Loader:
    def __init__(self, consumer, producer, writer: TickWriter, metrics: Metrics, stop: StopFlag,
                 topic_suffix: str = "", batch_size: int = 5000, poll_timeout: float = 0.05,
                 retention_days: int = 0, group: str = DEFAULT_GROUP):
        self.consumer = consumer
        self.producer = producer
        self.writer = writer
        self.metrics = metrics
        self.stop = stop
        self.suffix = topic_suffix
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.retention_days = retention_days
        self.group = group
        self.lag = LagReporter(metrics)
        self.events_topic = PIPELINE_EVENTS + topic_suffix
        self._next_retention = 0.0
        self._held: list = []
        self._committed: dict[tuple[str, int], int] = {}
        self._kinds: dict[str, tuple[str, str | None]] = {}
        self.replays = 0

    def topics(self) -> list[str]:
        return ([transformed_topic(e) + self.suffix for e in EXCHANGES] + [self.events_topic]
                + [dlq_topic(e) + self.suffix for e in EXCHANGES])

    def topic_kind(self, topic: str) -> tuple[str, str | None]:
        """('events' | 'dlq' | 'ticks', exchange); cached per topic."""
        known = self._kinds.get(topic)
        if known is None:
            if topic == self.events_topic:
                known = ("events", None)
            else:
                exchange = exchange_of_topic(topic)
                known = ("dlq" if topic == dlq_topic(exchange) + self.suffix else "ticks", exchange)
            self._kinds[topic] = known
        return known

    # -- partitions given to us: start where Postgres says our last durable batch ended
    def on_assign(self, consumer, partitions) -> None:
        try:
            stored = self.writer.stored_offsets(self.group, [(p.topic, p.partition) for p in partitions])
        except psycopg2.Error as exc:
            # Postgres unreachable now: start from Kafka's committed offsets; a batch that was
            # already stored is refused by the offsets row when we write it (Replayed)
            log.warning("stored offsets unavailable (%s); starting from Kafka's", safe_reason(exc, 200))
            self.writer.close()
            stored = {}
        for p in partitions:
            if (p.topic, p.partition) in stored:
                p.offset = stored[(p.topic, p.partition)]
        if stored:
            log.info("resuming %d partition(s) at the offsets stored with their rows", len(stored))
        # our consumers use the cooperative protocol (common.kafka.make_consumer): assign what was
        # added, at the offsets set above
        consumer.incremental_assign(partitions)

    def on_revoke(self, consumer, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]

    # -- one batch
    def process(self, messages: list) -> BatchResult | None:
        started = time.monotonic()
        batch = sort_batch(messages, self.topic_kind, time.time_ns())
        self._count_consumed(messages)
        # bad records first: their dead letters must be delivered before the offsets that skip them
        self.dead_letter(batch.bad)
        try:
            result = self._write_with_retry(batch, Offsets.of(self.group, messages))
        except Replayed as exc:
            self.replays += 1
            log.warning("%s; seeking to the stored offsets", exc)
            self._rewind()
            return None
        held = {(m.topic(), m.partition()) for m in self._held}
        offsets = advance_past_markers(self.consumer, next_offsets(messages), held)
        if commit_sync(self.consumer, offsets):
            self._committed.update({(o.topic, o.partition): o.offset for o in offsets})
        self.metrics.wrote("ticks", result.ticks_inserted)
        self.metrics.wrote("sessions", result.sessions)
        self.metrics.wrote("dead_letters", result.dead_letters)
        if result.slow_path:
            self.metrics.retried()
        self.metrics.batch(len(messages), time.monotonic() - started)
        return result

    def _count_consumed(self, messages: list) -> None:
        per_topic: dict[str, int] = {}
        for m in messages:
            per_topic[m.topic()] = per_topic.get(m.topic(), 0) + 1
        for topic, n in per_topic.items():
            self.metrics.consumed(topic, n)

    def _rewind(self) -> None:
        """Seek every assigned partition to the offset stored with its rows."""
        self._held = []
        assigned = [(tp.topic, tp.partition) for tp in self.consumer.assignment()]
        for (topic, partition), offset in self.writer.stored_offsets(self.group, assigned).items():
            self.consumer.seek(TopicPartition(topic, partition, offset))

    def dead_letter(self, bad: list[tuple]) -> None:
        """Bad records to their exchange's DLQ (stage `load`), delivered before offsets move."""
        counts: dict[str, int] = {}
        for m, reason, exchange in bad:
            if exchange is None:
                # no exchange to route it to: say so loudly (escaped), count it, move on
                log.error("unroutable bad record %s[%d]@%d: %s", m.topic(), m.partition(), m.offset(),
                          safe_reason(reason))
                counts["unroutable"] = counts.get("unroutable", 0) + 1
                continue
            topic = dlq_topic(exchange) + self.suffix
            value, headers = build_dead_letter(m.value(), reason=f"loader: {reason}", stage="load", exchange=exchange,
                                               source_topic=m.topic(), source_partition=m.partition(),
                                               source_offset=m.offset())
            self.producer.produce(topic, value=value, key=m.key(), headers=headers)
            counts[topic] = counts.get(topic, 0) + 1
        if bad:
            remaining = self.producer.flush(30)
            if remaining:
                raise RuntimeError(f"{remaining} DLQ records not delivered; not committing offsets")
        for topic, n in counts.items():      # once per topic and batch, after delivery
            self.metrics.dead_lettered(topic, n)

    def _write_with_retry(self, batch: Batch, offsets: Offsets) -> BatchResult:
        delays = backoff_delays()
        paused = False
        try:
            while True:
                try:
                    return self.writer.write(batch, offsets)
                except _RETRYABLE as exc:
                    if self.stop.is_set():
                        raise
                    delay = next(delays)
                    log.warning("DB write failed (%s: %s); retrying in %.1fs", type(exc).__name__,
                                safe_reason(exc, 200), delay)
                    self.metrics.retried()
                    if not paused:
                        self.consumer.pause(self.consumer.assignment())
                        paused = True
                    self._idle(delay)
        finally:
            if paused:
                self.consumer.resume(self.consumer.assignment())

    def _idle(self, seconds: float) -> None:
        """Wait while keeping group membership alive (paused partitions deliver nothing new)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stop.is_set():
            for m in self.consumer.consume(100, timeout=min(0.5, max(0.0, deadline - time.monotonic()))):
                self._held.append(m)  # fetched before the pause: processed with the next batch

    def commit_idle_positions(self) -> None:
        """Idle, everything returned so far is stored: commit positions that moved past markers only."""
        try:
            positions = self.consumer.position(self.consumer.assignment())
        except Exception as exc:  # noqa: BLE001 - lag bookkeeping only; the next idle turn retries
            log.debug("positions unavailable: %s", exc)
            return
        ahead = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in positions
                 if tp.offset >= 0 and tp.offset > self._committed.get((tp.topic, tp.partition), -1)]
        if ahead and commit_sync(self.consumer, ahead):
            self._committed.update({(o.topic, o.partition): o.offset for o in ahead})

    def maybe_retention(self) -> None:
        if not self.retention_days or time.monotonic() < self._next_retention:
            return
        self._next_retention = time.monotonic() + 3600
        try:
            dropped = self.writer.drop_expired_partitions(self.retention_days)
            if dropped:
                log.info("retention: dropped %d ticks partitions older than %d days", dropped,
                         self.retention_days)
        except psycopg2.Error as exc:
            log.warning("retention run failed: %s", safe_reason(exc, 200))
            self.metrics.retried()
            self.writer.close()

    def run(self) -> int:
        self.consumer.subscribe(self.topics(), on_assign=self.on_assign, on_revoke=self.on_revoke,
                                on_lost=self.on_revoke)
        self.metrics.up.labels(COMPONENT).set(1)
        log.info("loading %s", ", ".join(self.topics()))
        try:
            while not self.stop.is_set():
                self.maybe_retention()
                messages = self._held + self.consumer.consume(self.batch_size, timeout=self.poll_timeout)
                self._held = []
                good, errors = split_errors(messages)
                log_consumer_errors(errors, COMPONENT)
                if good:
                    try:
                        self.process(good)
                    except _RETRYABLE as exc:
                        if not self.stop.is_set():
                            raise
                        # stopping while the DB is down: nothing was committed, the next run replays
                        log.warning("stopping with an unwritten batch (%s); offsets not committed",
                                    safe_reason(exc, 200))
                        break
                elif not messages:
                    self.commit_idle_positions()
                self.lag.maybe_report(self.consumer)
        finally:
            self.metrics.up.labels(COMPONENT).set(0)
            self.consumer.close()
            self.writer.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    p = base_parser("cryptopipe load", "normalized ticks and pipeline events -> Postgres",
                    DEFAULT_GROUP, metrics_port(DEFAULT_METRICS_PORT))
    p.add_argument("--topic-suffix", default="", help="suffix of every topic name (tests)")
    p.add_argument("--retention-days", type=int, default=None,
                   help="drop ticks partitions older than this (default: settings; 0 disables)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    stop = StopFlag().install()
    metrics = Metrics(COMPONENT)
    start_metrics_server(args.metrics_port)
    retention = get_settings().ticks_retention_days if args.retention_days is None else args.retention_days
    loader = Loader(make_consumer(args.group), make_producer(), TickWriter(), metrics, stop,
                    topic_suffix=args.topic_suffix, batch_size=args.batch_size,
                    poll_timeout=args.poll_timeout, retention_days=retention, group=args.group)
    return loader.run()
