"""The Kafka tail behind `WS /v1/stream`: the transformed topics read from their end, in a thread
(confluent-kafka blocks), each batch of ticks handed to the hub in the event loop's thread.

Its consumer group (`api-<host>-<pid>-<random>`) is its own, so every server instance gets every
tick; it commits nothing: a restarted server starts again at the end (live prices, not history).
A record that does not decode is counted and skipped (the transformer wrote it; the loader's and
the DLQ's checks are the ones that keep it): a live view never stops for one record.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from streaming.api.records import ticks_of_record

log = logging.getLogger(__name__)


def tail_group_id() -> str:
    return f"api-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class KafkaTail:
    def __init__(self, topics: list[str], deliver, metrics=None, batch: int = 1000, poll_s: float = 0.05):
        """`deliver(ticks)` is called from the tail's thread with each batch of decoded ticks."""
        self.topics = topics
        self.deliver = deliver
        self.metrics = metrics
        self.batch = batch
        self.poll_s = poll_s
        self.assigned = threading.Event()      # set once partitions are assigned (tests wait for it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> "KafkaTail":
        self._thread = threading.Thread(target=self._run, name="kafka-tail", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tail()
            except Exception as exc:  # noqa: BLE001 - shown by /v1/health; retried, REST keeps serving
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("kafka tail failed; starting again in 5 s")
                self._stop.wait(5.0)

    def _tail(self) -> None:
        from common.kafka import make_consumer

        consumer = make_consumer(tail_group_id(), {"auto.offset.reset": "latest", "enable.partition.eof": False,
                                                   "fetch.wait.max.ms": 50})

        def on_assign(c, partitions):
            self.assigned.set()
            log.info("tailing %d partitions of %s", len(partitions), ", ".join(self.topics))

        consumer.subscribe(self.topics, on_assign=on_assign)
        try:
            while not self._stop.is_set():
                messages = consumer.consume(self.batch, timeout=self.poll_s)
                if not messages:
                    continue
                ticks = []
                for m in messages:
                    if m.error():
                        self.error = str(m.error())
                        log.warning("kafka: %s", m.error())
                        continue
                    try:
                        ticks.extend(ticks_of_record(m.value(), m.headers(), m.topic()))
                    except (ValueError, KeyError, TypeError) as exc:
                        if self.metrics is not None:
                            self.metrics.tail_bad.inc()
                        log.warning("skipped a record of %s[%d]@%d: %s", m.topic(), m.partition(), m.offset(),
                                    str(exc)[:200])
                if self.metrics is not None:
                    self.metrics.tail_records.inc(len(messages))
                    now_ms = time.time() * 1000
                    for t in ticks:
                        self.metrics.tail_lag.observe((now_ms - t.event_time_ms) / 1000)
                if ticks:
                    self.deliver(ticks)
        finally:
            consumer.close()
