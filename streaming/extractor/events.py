"""Connection lifecycle events -> `pipeline_events` (PipelineEvent JSON, key = exchange).

They travel through the same sink as the frames, so they reach Kafka in order with them, and
are spooled with them while the broker is away (with reserved room, so a full spool can still
record that it is full).
"""
from __future__ import annotations

import logging
import time

from common.models import PipelineEvent
from common.topics import PIPELINE_EVENTS

from .spool import Record

log = logging.getLogger("cryptopipe.extractor")


class Events:
    def __init__(self, exchange: str, sink, metrics=None, topic_suffix: str = ""):
        self.exchange = exchange
        self.sink = sink
        self.metrics = metrics
        self.topic = PIPELINE_EVENTS + topic_suffix

    def record(self, kind: str, conn_id: str, reason: str = "", at_ns: int | None = None, **detail) -> Record:
        event = PipelineEvent(exchange=self.exchange, conn_id=conn_id, kind=kind,
                              at_ns=at_ns if at_ns is not None else time.time_ns(), reason=reason, detail=detail)
        return Record(self.topic, self.exchange.encode(), event.to_json(),
                      [("exchange", self.exchange.encode()), ("conn_id", conn_id.encode()),
                       ("received_ns", str(event.at_ns).encode())])

    def emit(self, kind: str, conn_id: str, reason: str = "", at_ns: int | None = None, **detail) -> None:
        rec = self.record(kind, conn_id, reason, at_ns, **detail)
        if kind != "heartbeat":
            log.info("event %s conn=%s%s", kind, conn_id, f" reason={reason}" if reason else "")
        if self.metrics is not None:
            self.metrics.event(kind)
        if not self.sink.offer(rec, event=True):
            log.error("event %s conn=%s could not be stored: spool full even with its reserve", kind, conn_id)
