"""What the transformer, loader and archiver share: stop on SIGTERM, /metrics, consumer lag,
argument parsing, logging, and the Kafka helpers they all need (offsets to commit, headers).

Each of the three is a plain synchronous loop: consume a batch, make it durable (a Kafka
transaction, a Postgres transaction, an S3 upload), then commit the offsets. Nothing is
consumed while a batch is being made durable, so memory is bounded by the batch size.
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Iterable


from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from common.codec.dlq import safe_reason  # noqa: F401 - re-exported for the consumers' log lines

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------- stopping

class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes its current batch and exits cleanly."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        log.info("signal %s: finishing the current batch and stopping", signum)
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


# --------------------------------------------------------------------------- metrics

class Metrics:
    """The metrics every consumer exports, labelled by component (transform | load | archive)."""

    records = Counter("cryptopipe_consumer_records_total", "records consumed", ["component", "topic"])
    written = Counter("cryptopipe_consumer_written_total",
                      "records made durable (produced, inserted, archived)", ["component", "kind"])
    dlq = Counter("cryptopipe_consumer_dlq_total", "records sent to a dead-letter topic", ["component", "topic"])
    batch_size = Histogram("cryptopipe_consumer_batch_size", "records per durable batch", ["component"],
                           buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000))
    batch_seconds = Histogram("cryptopipe_consumer_batch_seconds", "time to make one batch durable",
                              ["component"],
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
    lag = Gauge("cryptopipe_consumer_lag", "high watermark minus committed position",
                ["component", "topic", "partition"])
    retries = Counter("cryptopipe_consumer_retries_total", "retried sink writes", ["component"])
    up = Gauge("cryptopipe_consumer_up", "1 while the loop runs", ["component"])

    def __init__(self, component: str) -> None:
        self.component = component

    def consumed(self, topic: str, n: int = 1) -> None:
        self.records.labels(self.component, topic).inc(n)

    def wrote(self, kind: str, n: int) -> None:
        self.written.labels(self.component, kind).inc(n)

    def dead_lettered(self, topic: str, n: int = 1) -> None:
        self.dlq.labels(self.component, topic).inc(n)

    def batch(self, n: int, seconds: float) -> None:
        self.batch_size.labels(self.component).observe(n)
        self.batch_seconds.labels(self.component).observe(seconds)

    def retried(self) -> None:
        self.retries.labels(self.component).inc()


def start_metrics_server(port: int) -> None:
    """Serve /metrics on 127.0.0.1:port (0 disables)."""
    if port:
        start_http_server(port, addr="127.0.0.1")
        log.info("metrics on http://127.0.0.1:%d/metrics", port)


class LagReporter:
    """Updates the lag gauge at most every `interval` seconds from cached watermarks (no round trip)."""

    def __init__(self, metrics: Metrics, interval: float = 10.0) -> None:
        self.metrics = metrics
        self.interval = interval
        self._next = 0.0

    def maybe_report(self, consumer: Consumer) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            assignment = consumer.assignment()
            if not assignment:
                return
            for tp in consumer.position(assignment):
                try:
                    _low, high = consumer.get_watermark_offsets(tp, cached=True)
                except KafkaException:
                    continue
                if high is None or high < 0 or tp.offset < 0:
                    continue
                self.metrics.lag.labels(self.metrics.component, tp.topic, str(tp.partition)).set(
                    max(0, high - tp.offset))
        except KafkaException as exc:  # metrics must never stop the loop
            log.debug("lag report failed: %s", exc)


# --------------------------------------------------------------------------- kafka helpers

class Watchdog:
    """Ends the process when a guarded step takes longer than `limit_s`.

    Some librdkafka calls can block without end after a network partition (e.g.
    `send_offsets_to_transaction` on a stale group coordinator, librdkafka #5456/#5511): no
    error, no progress, nothing for supervisord to see. Exiting non-zero hands the problem to
    supervisord, which restarts the daemon; the restart fences the stuck transaction, which is
    aborted, and the batch is read again — nothing lost, nothing doubled.
    """

    EXIT_CODE = 75

    def __init__(self, limit_s: float, what: str, exit=None):
        import os

        self.limit_s = limit_s
        self.what = what
        self._exit = exit or os._exit
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        logging.getLogger("streaming.watchdog").critical(
            "%s stuck for more than %.0f s; exiting so that supervisord restarts this process",
            self.what, self.limit_s)
        logging.shutdown()
        self._exit(self.EXIT_CODE)

    def __enter__(self):
        self._timer = threading.Timer(self.limit_s, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()


def next_offsets(messages: Iterable) -> list[TopicPartition]:
    """The offsets to commit after `messages`: last offset + 1 per (topic, partition)."""
    high: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        off = m.offset()
        if off > high.get(key, -1):
            high[key] = off
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(high.items())]


def advance_past_markers(consumer: Consumer, offsets: list[TopicPartition],
                         exclude: set[tuple[str, int]] = frozenset()) -> list[TopicPartition]:
    """Move each commit offset up to the consumer's position when that is further.

    On a transactional input topic the position skips the commit markers after the last record
    returned; committing it (rather than last offset + 1) lets the committed offset reach the
    end offset, so lag reads 0 once everything is stored. Only valid when every record returned
    by the consumer for those partitions has been made durable: partitions with records returned
    but not yet processed go in `exclude`.
    """
    if not offsets:
        return offsets
    try:
        positions = {(tp.topic, tp.partition): tp.offset
                     for tp in consumer.position([TopicPartition(o.topic, o.partition) for o in offsets])}
    except KafkaException:
        return offsets
    out = []
    for o in offsets:
        pos = positions.get((o.topic, o.partition), -1)
        if (o.topic, o.partition) not in exclude and pos > o.offset:
            o = TopicPartition(o.topic, o.partition, pos)
        out.append(o)
    return out


def split_errors(messages: list) -> tuple[list, list]:
    """(good records, errors); partition EOF is not an error."""
    good, errors = [], []
    for m in messages:
        err = m.error()
        if err is None:
            good.append(m)
        elif err.code() != KafkaError._PARTITION_EOF:
            errors.append(err)
    return good, errors


def log_consumer_errors(errors: list, component: str) -> None:
    for err in errors:
        if err.fatal():
            raise KafkaException(err)
        log.warning("%s: consumer error: %s", component, err)


_GROUP_MOVED = {KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                KafkaError._NO_OFFSET, KafkaError.FENCED_INSTANCE_ID}
_TRANSIENT = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
              KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TRANSPORT, KafkaError.REQUEST_TIMED_OUT,
              KafkaError._TIMED_OUT, KafkaError._WAIT_COORD, KafkaError.NETWORK_EXCEPTION,
              KafkaError._ALL_BROKERS_DOWN}


def commit_sync(consumer: Consumer, offsets: list[TopicPartition], give_up_after: float = 300.0) -> bool:
    """Commit explicit offsets; waits out a broker or coordinator restart. False if the partitions
    are no longer ours (the group moved on: the new owner replays from the last commit, and every
    sink here is idempotent, so the replay adds nothing twice)."""
    if not offsets:
        return True
    deadline = time.monotonic() + give_up_after
    for delay in backoff_delays(0.2, 5.0):
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            return True
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            if code in _GROUP_MOVED:
                log.warning("offset commit refused (%s); the new owner will replay", exc)
                return False
            transient = code in _TRANSIENT or (isinstance(err, KafkaError) and err.retriable())
            if not transient or time.monotonic() > deadline:
                raise
            log.warning("offset commit failed (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
    return False


# --------------------------------------------------------------------------- cli

def base_parser(prog: str, description: str, group: str, metrics_port: int,
                poll_timeout: float = 0.05) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--group", default=group, help=f"consumer group id (default {group})")
    p.add_argument("--metrics-port", type=int, default=metrics_port,
                   help=f"serve /metrics on 127.0.0.1:PORT, 0 disables (default {metrics_port})")
    p.add_argument("--batch-size", type=int, default=5000, help="max records per durable batch")
    # a batch is what arrived within the poll timeout (records are batches of ticks, so a batch
    # rarely fills): the timeout is the latency each hop adds at low rates
    p.add_argument("--poll-timeout", type=float, default=poll_timeout,
                   help=f"seconds to wait for a batch (default {poll_timeout})")
    p.add_argument("--log-level", default="INFO")
    return p


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def topics_arg(value: str | None, default: Iterable[str]) -> list[str]:
    if not value:
        return list(default)
    return [t.strip() for t in value.split(",") if t.strip()]


def backoff_delays(first: float = 0.5, cap: float = 10.0):
    """0.5, 1, 2, 4, 8, 10, 10, ... seconds."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)
