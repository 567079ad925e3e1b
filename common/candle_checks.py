"""What the stream's candles missed, read from `candle_checks` and `reconcile_state` (written by
backfill/: backfill.checks, backfill.reconcile), for `cryptopipe reconcile --status` and Prometheus.

- `divergence(conn, window_minutes=60, exchanges=EXCHANGES) -> list[dict]`: per exchange, over
  the newest `window_minutes` of checked minutes: minutes, stream candles compared / differing /
  missing, the largest relative difference of each field, and how far reconciliation has come.
- `CandleChecksCollector(read=None, ttl_s=30)`: a prometheus_client custom collector that reads
  those figures at scrape time (at most once per `ttl_s`, so a scraper every few seconds costs
  Postgres one small query per 30 s). Mount it in any process that serves /metrics:
  `prometheus_client.REGISTRY.register(CandleChecksCollector())`. Reconciliation itself runs in
  Airflow tasks and the CLI, which live too briefly to be scraped.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from common.topics import EXCHANGES

log = logging.getLogger("common.candle_checks")
FIELDS = ("open", "high", "low", "close", "volume")
WINDOW_MINUTES = 60

_DIVERGENCE = """
SELECT e.exchange, s.reconciled_until, s.updated_at, m.last, w.minutes, w.compared, w.differing, w.missing,
       w.open, w.high, w.low, w.close, w.volume
FROM unnest(%(exchanges)s::text[]) AS e(exchange)
LEFT JOIN reconcile_state s ON s.exchange = e.exchange
LEFT JOIN LATERAL (SELECT max(minute) AS last FROM candle_checks c
                   WHERE c.exchange = e.exchange AND (%(until)s::timestamptz IS NULL OR c.minute < %(until)s)) m ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS minutes, sum(symbols_compared) AS compared, sum(symbols_differing) AS differing,
           sum(symbols_missing) AS missing, max(max_open_rel_diff) AS open, max(max_high_rel_diff) AS high,
           max(max_low_rel_diff) AS low, max(max_close_rel_diff) AS close, max(max_volume_rel_diff) AS volume
    FROM candle_checks c
    WHERE c.exchange = e.exchange AND c.minute > m.last - %(window)s AND c.minute <= m.last
) w ON true
ORDER BY e.exchange
"""


def divergence(conn, window_minutes: int = WINDOW_MINUTES, exchanges: Iterable[str] = EXCHANGES,
               until: datetime | None = None) -> list[dict]:
    """One dict per exchange: exchange, reconciled_until, state_updated_at, last_minute (newest
    checked minute, before `until` when given), minutes, compared, differing, missing (ints),
    max_rel_diff {field: Decimal or None}; figures over the `window_minutes` ending at last_minute."""
    with conn.cursor() as cur:
        cur.execute(_DIVERGENCE, {"exchanges": list(exchanges), "window": timedelta(minutes=window_minutes),
                                  "until": until})
        rows = cur.fetchall()
    out = []
    for ex, until, updated, last, minutes, compared, differing, missing, *diffs in rows:
        out.append({"exchange": ex, "reconciled_until": until, "state_updated_at": updated, "last_minute": last,
                    "window_minutes": window_minutes, "minutes": int(minutes or 0), "compared": int(compared or 0),
                    "differing": int(differing or 0), "missing": int(missing or 0),
                    "max_rel_diff": dict(zip(FIELDS, diffs))})
    return out


def _read_from_postgres(window_minutes: int) -> list[dict]:
    from common.db import connect

    # a scrape must not hang on a database that is down or busy
    conn = connect(connect_timeout=3, options="-c statement_timeout=5000")
    try:
        return divergence(conn, window_minutes)
    finally:
        conn.close()


class CandleChecksCollector:
    """Gauges per exchange, over the newest WINDOW_MINUTES checked minutes (see `divergence`):

    cryptopipe_reconciled_until_timestamp_seconds       every minute before it is the exchange's candle
    cryptopipe_candle_checks_last_minute_timestamp_seconds  newest minute with a check
    cryptopipe_stream_candles_compared / _differing / _missing   summed over the window
    cryptopipe_stream_candles_differing_ratio           differing / compared
    cryptopipe_stream_candle_max_relative_difference{field}  largest |stream - rest| / rest
    cryptopipe_candle_checks_up                         1 if the last read worked, else 0
    """

    def __init__(self, read: Callable[[], list[dict]] | None = None, *, ttl_s: float = 30.0,
                 window_minutes: int = WINDOW_MINUTES, clock: Callable[[], float] = time.monotonic):
        self._read = read or (lambda: _read_from_postgres(window_minutes))
        self.ttl_s = ttl_s
        self.window_minutes = window_minutes
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[dict] | None] | None = None

    def _rows(self) -> list[dict] | None:
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self.ttl_s:
                try:
                    rows = self._read()
                except Exception as e:  # noqa: BLE001 - a scrape reports the failure, never raises it
                    log.warning("candle_checks unreadable: %s: %s", type(e).__name__, str(e)[:200])
                    rows = None
                self._cached = (now, rows)
            return self._cached[1]

    def _families(self):
        from prometheus_client.core import GaugeMetricFamily

        w = f"over the newest {self.window_minutes} checked minutes"
        g = {
            "until": GaugeMetricFamily("cryptopipe_reconciled_until_timestamp_seconds",
                                       "Every minute before this one is stored as the exchange's own candle",
                                       labels=["exchange"]),
            "last": GaugeMetricFamily("cryptopipe_candle_checks_last_minute_timestamp_seconds",
                                      "Newest minute whose stream candles were checked against the exchange's",
                                      labels=["exchange"]),
            "compared": GaugeMetricFamily("cryptopipe_stream_candles_compared",
                                          f"Stream candles held against the exchange's candle, {w}",
                                          labels=["exchange"]),
            "differing": GaugeMetricFamily("cryptopipe_stream_candles_differing",
                                           f"Stream candles that differed from the exchange's, {w}",
                                           labels=["exchange"]),
            "missing": GaugeMetricFamily("cryptopipe_stream_candles_missing",
                                         f"Symbol-minutes the exchange traded in with no stream candle, {w}",
                                         labels=["exchange"]),
            "ratio": GaugeMetricFamily("cryptopipe_stream_candles_differing_ratio",
                                       f"Share of compared stream candles that differed, {w}", labels=["exchange"]),
            "max": GaugeMetricFamily("cryptopipe_stream_candle_max_relative_difference",
                                     f"Largest |stream - exchange| / exchange of a candle field, {w}",
                                     labels=["exchange", "field"]),
            "up": GaugeMetricFamily("cryptopipe_candle_checks_up",
                                    "1 if candle_checks could be read at the last refresh, else 0"),
        }
        return g

    def describe(self):
        # registering must not touch the database: names only
        return list(self._families().values())

    def collect(self):
        g = self._families()
        rows = self._rows()
        g["up"].add_metric([], 0.0 if rows is None else 1.0)
        for r in rows or []:
            ex = [r["exchange"]]
            if r["reconciled_until"] is not None:
                g["until"].add_metric(ex, r["reconciled_until"].timestamp())
            if r["last_minute"] is None:
                continue
            g["last"].add_metric(ex, r["last_minute"].timestamp())
            for key in ("compared", "differing", "missing"):
                g[key].add_metric(ex, float(r[key]))
            if r["compared"]:
                g["ratio"].add_metric(ex, r["differing"] / r["compared"])
            for name, value in r["max_rel_diff"].items():
                if value is not None:
                    g["max"].add_metric([r["exchange"], name], float(value))
        return list(g.values())
