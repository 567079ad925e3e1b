"""Prometheus metrics of an extractor process (served on its own port by the CLI)."""
from __future__ import annotations

import time

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily


class _FrameCounters:
    """frames / ticks / bytes received, per exchange: plain ints added on every frame, turned into
    the three counters when /metrics is scraped. A prometheus Counter takes a lock and a few calls
    per `inc`; three of them per frame were ~10 % of the KuCoin extractor (one frame per tick)."""

    FAMILIES = (("cryptopipe_extractor_frames", "websocket frames received"),
                ("cryptopipe_extractor_ticks", "ticker objects in received data frames"),
                ("cryptopipe_extractor_bytes", "websocket payload bytes received"))

    def __init__(self) -> None:
        self.by_exchange: dict[str, list[int]] = {}    # exchange -> [frames, ticks, bytes]

    def of(self, exchange: str) -> list[int]:
        return self.by_exchange.setdefault(exchange, [0, 0, 0])

    def collect(self):
        rows = list(self.by_exchange.items())
        for i, (name, doc) in enumerate(self.FAMILIES):
            family = CounterMetricFamily(name, doc, labels=["exchange"])
            for exchange, counts in rows:
                family.add_metric([exchange], counts[i])
            yield family


FRAME_COUNTERS = _FrameCounters()
REGISTRY.register(FRAME_COUNTERS)
RECONNECTS = Counter("cryptopipe_extractor_reconnects_total", "connection ends, by reason", ["exchange", "reason"])
CONNECTIONS = Gauge("cryptopipe_extractor_connections", "open websocket connections", ["exchange"])
NEWEST_AGE = Gauge("cryptopipe_extractor_newest_frame_age_seconds", "seconds since the newest frame", ["exchange"])
SPOOL_BYTES = Gauge("cryptopipe_extractor_spool_bytes", "bytes waiting in the on-disk spool", ["exchange"])
PENDING = Gauge("cryptopipe_extractor_producer_pending", "records handed to Kafka, not yet acknowledged",
                ["exchange"])
PRODUCE_ERRORS = Counter("cryptopipe_extractor_produce_errors_total", "failed Kafka deliveries / produce calls",
                         ["exchange"])
EVENTS = Counter("cryptopipe_extractor_events_total", "pipeline events emitted", ["exchange", "kind"])
DELIVERY_SECONDS = Histogram("cryptopipe_extractor_delivery_seconds", "produce() to broker acknowledgement",
                             ["exchange"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5, 30))


class Metrics:
    """The metrics of one exchange; cheap attribute access on the hot path."""

    def __init__(self, exchange: str):
        self.exchange = exchange
        self._counts = FRAME_COUNTERS.of(exchange)
        self.connections = CONNECTIONS.labels(exchange)
        self.spool_bytes = SPOOL_BYTES.labels(exchange)
        self.pending = PENDING.labels(exchange)
        self.produce_errors = PRODUCE_ERRORS.labels(exchange)
        self.delivery = DELIVERY_SECONDS.labels(exchange)
        self.newest_frame_mono = 0.0
        NEWEST_AGE.labels(exchange).set_function(self._newest_age)

    def _newest_age(self) -> float:
        if not self.newest_frame_mono:
            return float("inf")
        return time.monotonic() - self.newest_frame_mono

    def frame(self, size: int, ticks: int) -> None:
        counts = self._counts
        counts[0] += 1
        counts[1] += ticks
        counts[2] += size
        self.newest_frame_mono = time.monotonic()

    def reconnect(self, reason: str) -> None:
        RECONNECTS.labels(self.exchange, reason.split(":", 1)[0][:40]).inc()

    def event(self, kind: str) -> None:
        EVENTS.labels(self.exchange, kind).inc()
