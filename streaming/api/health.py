"""GET /v1/gaps and GET /v1/health — what the operators' health view shows, as JSON
(common/health.py reads Postgres, common/consumer_lag.py reads Kafka's group offsets)."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Query, Request

from common import health as readers
from streaming.api import params

router = APIRouter()
UTC = timezone.utc
GAP_STATUSES = ("open", "backfilling", "filled", "failed")


@router.get("/v1/gaps", summary="Gaps in the stored history",
            description="Recorded gaps (time the websockets did not cover, silent minutes, missing candles) "
                        "and their backfill status, newest first.")
def get_gaps(request: Request,
             exchange: str | None = Query(None, description="binance or kucoin; omitted: both"),
             status: str | None = Query(None, description="open, backfilling, filled or failed"),
             since: str | None = Query(None, description="gaps ending after this time (ISO-8601); default 24 h ago"),
             limit: int | None = Query(None, description="at most this many (1-1000, default 200)")) -> list[dict]:
    st = request.app.state
    ex = params.one_exchange(exchange) if exchange else None
    if status is not None and status not in GAP_STATUSES:
        raise params.bad(f"unknown status {params.show(status)}: expected one of {', '.join(GAP_STATUSES)}")
    t = params.time_param(since, "since") or datetime.now(UTC) - timedelta(hours=24)
    n = params.bounded_int(limit, "limit", 1, 1000, 200)
    with st.pool.cursor() as cur:
        return readers.recent_gaps(cur, ex, status, t, n)


class HealthCache:
    """The snapshot is a dozen queries and a Kafka round trip: computed at most every `ttl_s`
    seconds, whoever asks (pages poll it)."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = -1e9
        self._value: dict | None = None

    def get(self, compute) -> dict:
        with self._lock:
            if self._value is None or time.monotonic() - self._at > self.ttl_s:
                self._value, self._at = compute(), time.monotonic()
            return self._value


@router.get("/v1/health", summary="Pipeline health",
            description="Per exchange: websocket sessions now and in the last 24 h, ticks/s, gaps by status, "
                        "a 24-h coverage strip and a symbol-group x hour heat map; consumer lag per group; "
                        "the last cross-exchange divergences, reconciliation checks and supervisor checks; "
                        "and this server's own stream state.")
def get_health(request: Request) -> dict:
    st = request.app.state

    def compute() -> dict:
        from common.consumer_lag import lag_report

        lag = lag_report(st.lag_reader()) if st.lag_reader is not None else {"error": "not configured"}
        with st.pool.cursor() as cur:
            return readers.snapshot(cur, list(st.exchanges), lag)

    body = dict(st.health_cache.get(compute))
    body["stream"] = st.stream_status()
    return body
