"""The prices server (`cryptopipe serve`, supervisord program `api`, 127.0.0.1:8000 moved by
CRYPTOPIPE_PORT_OFFSET): read-only HTTP and websocket access to what the pipeline stores and
streams.

    app.py       the FastAPI app factory: routes, lifespan (pool, Kafka tail, hub), /metrics, the page
    pool.py      a small bounded pool of read-only Postgres connections (psycopg2)
    params.py    validation of every query parameter (4xx with a message, never a 500)
    prices.py    GET /v1/prices            candles.py   GET /v1/candles (paginated, window capped)
    health.py    GET /v1/gaps, /v1/health (common/health.py's readers + consumer lag)
    stream.py    WS /v1/stream (subscription, limits, the per-client sender)
    records.py   the one decoder of a transformed-topic record into ticks
    tail.py      the Kafka tail: transformed topics from their end, in a thread, into the hub
    hub.py       fan-out and conflation: bounded per client, slow clients conflated then dropped
    metrics.py   prometheus-client metrics (clients, messages, drops, disconnects, divergences)
    static/      the page at / (HTML + JS, no build step, nothing from the internet)
"""
