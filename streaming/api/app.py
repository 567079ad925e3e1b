"""The prices server's FastAPI app: `create_app()`.

Read-only by construction: GET routes and one websocket, database sessions read-only at the
server. Every Postgres access goes through the pool; the Kafka tail runs in its own thread and
feeds the hub in the event loop's thread.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg2
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import make_asgi_app

from common.topics import EXCHANGES, transformed_topic
from streaming.api import candles, health, prices, stream
from streaming.api.catalog import Catalog
from streaming.api.health import HealthCache
from streaming.api.hub import Hub
from streaming.api.metrics import ApiMetrics, DivergenceCollector
from streaming.api.pool import PoolBusy, ReadOnlyPool
from streaming.api.tail import KafkaTail

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger(__name__)

DESCRIPTION = """Live and stored crypto prices from Binance and KuCoin, as the cryptopipe pipeline
streams and stores them. Read-only. Prices are decimal strings (exact); times are ISO-8601 UTC.

`WS /v1/stream?exchanges=&symbols=&conflate_ms=` streams live ticks in the same shape as
`GET /v1/prices` (one JSON object per frame, or an array of them when batched)."""


def create_app(settings=None, *, tail: bool = True, topic_suffix: str = "") -> FastAPI:
    """The app. `tail=False`: no Kafka tail (the websocket then streams nothing; REST only).
    `topic_suffix`: read `<exchange>_transformed_data<suffix>` (the benchmark's private topics)."""
    if settings is None:
        from common.settings import get_settings

        settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        st = app.state
        st.pool = ReadOnlyPool(settings.postgres_dsn, settings.api_db_pool_size)
        st.catalog = Catalog(st.pool)
        st.metrics.registry.register(DivergenceCollector(st.pool))
        loop = asyncio.get_running_loop()
        st.tail = None
        if tail:
            st.tail = KafkaTail([transformed_topic(ex) + topic_suffix for ex in st.exchanges],
                                lambda ticks: loop.call_soon_threadsafe(st.hub.publish, ticks), st.metrics).start()
        try:
            yield
        finally:
            if st.tail is not None:
                st.tail.stop()
            st.pool.close()

    app = FastAPI(title="cryptopipe prices", version="1", description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    st = app.state
    st.settings = settings
    st.exchanges = EXCHANGES
    st.metrics = ApiMetrics()
    st.hub = Hub(st.metrics)
    st.metrics.conflated_clients.set_function(lambda: sum(1 for c in st.hub.clients if c.conflating))
    st.health_cache = HealthCache(settings.api_health_cache_seconds)

    def lag_reader():
        from common.consumer_lag import LagReader
        from common.kafka import make_admin

        if getattr(st, "_admin", None) is None:
            st._admin = make_admin()
        return LagReader(st._admin, timeout_s=5.0)

    st.lag_reader = lag_reader

    def stream_status() -> dict:
        t = st.tail
        return {"clients": len(st.hub), "ticks_received": st.hub.ticks_in,
                "kafka_assigned": bool(t and t.assigned.is_set()), "kafka_error": t.error if t else "no tail"}

    st.stream_status = stream_status

    for module in (prices, candles, health, stream):
        app.include_router(module.router)
    app.mount("/metrics", make_asgi_app(st.metrics.registry))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "other")
        st.metrics.requests.labels(name, str(response.status_code)).inc()
        st.metrics.request_seconds.labels(name).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(PoolBusy)
    async def busy(request: Request, exc: PoolBusy):
        return JSONResponse({"detail": "the server is busy; try again"}, status_code=503)

    @app.exception_handler(psycopg2.Error)
    async def database_error(request: Request, exc: psycopg2.Error):
        log.warning("database error on %s: %s", request.url.path, str(exc).strip()[:300])
        return JSONResponse({"detail": "the database is unavailable; try again"}, status_code=503)

    return app
