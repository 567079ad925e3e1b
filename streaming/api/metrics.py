"""The server's Prometheus metrics (served at /metrics), and the cross-check's figure read from
`price_divergences` at scrape time."""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.clients = Gauge("cryptopipe_api_ws_clients", "open websocket clients", registry=r)
        self.conflated_clients = Gauge("cryptopipe_api_ws_clients_conflated",
                                       "websocket clients currently conflated (asked for it, or too slow)", registry=r)
        self.messages = Counter("cryptopipe_api_ws_ticks_sent", "ticks sent to websocket clients", registry=r)
        self.frames = Counter("cryptopipe_api_ws_frames_sent", "websocket frames sent (a frame may batch ticks)",
                              registry=r)
        self.dropped = Counter("cryptopipe_api_ws_ticks_conflated",
                               "ticks not sent because a newer one of the same symbol replaced them", registry=r)
        self.disconnects = Counter("cryptopipe_api_ws_disconnects", "websocket connections ended, by reason",
                                   ["reason"], registry=r)
        self.refused = Counter("cryptopipe_api_ws_refused", "websocket connections refused, by reason", ["reason"],
                               registry=r)
        self.server_wait = Histogram("cryptopipe_api_ws_server_wait_seconds",
                                     "time the oldest tick of a frame waited in the server (tail -> socket write done)",
                                     buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                     registry=r)
        self.tail_lag = Histogram("cryptopipe_api_tail_lag_seconds",
                                  "tick exchange time -> read by the server's Kafka tail (the pipeline upstream)",
                                  buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.tail_records = Counter("cryptopipe_api_tail_records", "transformed-topic records read", registry=r)
        self.tail_bad = Counter("cryptopipe_api_tail_bad_records", "records that did not decode (skipped)",
                                registry=r)
        self.requests = Counter("cryptopipe_api_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("cryptopipe_api_http_seconds", "HTTP request time", ["route"], registry=r)


class DivergenceCollector:
    """`cryptopipe_price_divergences_24h` and `cryptopipe_price_divergence_max_bps_24h`, per
    exchange pair, from the table the cross-check DAG writes."""

    def __init__(self, pool):
        self.pool = pool

    def collect(self):
        count = GaugeMetricFamily("cryptopipe_price_divergences_24h",
                                  "cross-exchange divergence windows that ended in the last 24 h",
                                  labels=["exchange_a", "exchange_b"])
        worst = GaugeMetricFamily("cryptopipe_price_divergence_max_bps_24h",
                                  "largest cross-exchange close difference of those windows (bps)",
                                  labels=["exchange_a", "exchange_b"])
        try:
            with self.pool.cursor() as cur:
                cur.execute("SELECT to_regclass('price_divergences') IS NOT NULL")
                if cur.fetchone()[0]:
                    cur.execute("""SELECT exchange_a, exchange_b, count(*), max(max_bps) FROM price_divergences
                                    WHERE window_end > now() - interval '24 hours' GROUP BY 1, 2""")
                    for a, b, n, bps in cur.fetchall():
                        count.add_metric([a, b], n)
                        worst.add_metric([a, b], float(bps))
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because Postgres is down
            log.warning("divergence metrics unavailable: %s", exc)
        yield count
        yield worst
