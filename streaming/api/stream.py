"""WS /v1/stream — live normalized ticks, read from the transformed topics (tail.py, hub.py).

    /v1/stream?exchanges=binance,kucoin&symbols=BTC-USDT,ETH-USDT&conflate_ms=250

Either list omitted = all. Each text frame is one JSON object `{"exchange", "symbol", "price",
"event_time"}` or a JSON array of them (a batch). `conflate_ms` (0-60000): at most one update per
symbol per that many milliseconds. A connection over the limits is refused with an HTTP answer
(400 bad parameter, 404 unknown symbol, 503 too many connections) carrying a JSON `detail`.
The server sends only; what a client sends is read and ignored.
"""
from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, HTTPException, WebSocket
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from streaming.api import params
from streaming.api.hub import Client, SlowClient, batch_text

router = APIRouter()
log = logging.getLogger(__name__)
MAX_BATCH = 1000                  # ticks per frame
MAX_CONFLATE_MS = 60_000
CLOSE_TRY_AGAIN_LATER = 1013


async def deny(ws: WebSocket, status: int, detail: str, metrics, reason: str) -> None:
    metrics.refused.labels(reason).inc()
    try:
        await ws.send_denial_response(JSONResponse({"detail": detail}, status_code=status))
    except RuntimeError:          # a server without the denial extension: accept, then close with the reason
        await ws.accept()
        await ws.close(code=1008, reason=detail[:120])


async def subscription(ws: WebSocket) -> tuple[frozenset, frozenset | None, int]:
    st = ws.app.state
    q = ws.query_params
    unknown_names = set(q) - {"exchanges", "symbols", "conflate_ms"}
    if unknown_names:
        raise params.bad(f"unknown parameter {params.show(sorted(unknown_names)[0])}: "
                         "expected exchanges, symbols, conflate_ms")
    exchanges = params.exchanges(q.get("exchanges"))
    symbols = params.symbols(q.get("symbols"), st.settings.api_max_symbols)
    raw = q.get("conflate_ms")
    conflate = 0
    if raw:
        if not raw.isdigit() or len(raw) > 6:
            raise params.bad(f"conflate_ms {params.show(raw)} is not a whole number of milliseconds")
        conflate = params.bounded_int(int(raw), "conflate_ms", 0, MAX_CONFLATE_MS, 0)
    if symbols is not None:
        known = set()
        for ex in exchanges:
            known |= await run_in_threadpool(st.catalog.symbols, ex, symbols)
        params.unknown(known, symbols, " or ".join(exchanges))
    return frozenset(exchanges), (frozenset(symbols) if symbols is not None else None), conflate


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    st = ws.app.state
    metrics = st.metrics
    try:
        exchanges, symbols, conflate_ms = await subscription(ws)
    except HTTPException as e:
        await deny(ws, e.status_code, e.detail, metrics, "bad_request" if e.status_code == 400 else "unknown_symbol")
        return
    except Exception as e:  # noqa: BLE001 - e.g. the database is down: refuse, do not crash the handler
        log.warning("websocket refused: %s", e)
        await deny(ws, 503, "the server cannot check the subscription now; try again", metrics, "unavailable")
        return
    if len(st.hub) >= st.settings.api_max_connections:
        await deny(ws, 503, f"too many connections (limit {st.settings.api_max_connections}); try again later",
                   metrics, "too_many_connections")
        return
    await ws.accept()
    client = Client(exchanges, symbols, conflate_ms, st.settings.api_client_queue, st.settings.api_slow_client_seconds)
    st.hub.add(client)
    reader = asyncio.create_task(_read_until_closed(ws, client))
    reason = "client_closed"
    try:
        await _send_loop(ws, client, metrics)
    except SlowClient as e:
        reason = "slow"
        await _close(ws, CLOSE_TRY_AGAIN_LATER, f"too slow: {e}")
    except (WebSocketDisconnect, RuntimeError, OSError):
        reason = "client_closed"
    except Exception:  # noqa: BLE001
        reason = "error"
        log.exception("websocket sender failed")
        await _close(ws, 1011, "server error")
    finally:
        st.hub.remove(client)
        reader.cancel()
        metrics.disconnects.labels(reason).inc()
        metrics.dropped.inc(client.conflated_count)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    try:
        await asyncio.wait_for(ws.close(code=code, reason=reason), timeout=2)
    except Exception as exc:  # noqa: BLE001 - the socket may be gone already (counted as its disconnect)
        log.debug("closing a websocket (%s) failed: %r", reason, exc)


async def _read_until_closed(ws: WebSocket, client: Client) -> None:
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
    except Exception as exc:  # noqa: BLE001 - a client gone mid-read is a disconnect (counted by the sender)
        log.debug("websocket read ended: %r", exc)
    client.closed = True
    client.wake.set()


async def _send_loop(ws: WebSocket, client: Client, metrics) -> None:
    while not client.closed:
        await client.wake.wait()
        client.wake.clear()
        while client.pending() and not client.closed:
            waited_since = client.waiting_since
            payloads = client.take(MAX_BATCH)
            started = time.monotonic()
            try:
                await asyncio.wait_for(ws.send_text(batch_text(payloads)), timeout=client.slow_s)
            except asyncio.TimeoutError:
                raise SlowClient(f"one frame waited more than {client.slow_s:.0f}s to be sent") from None
            now = time.monotonic()
            metrics.frames.inc()
            if waited_since is not None:
                metrics.server_wait.observe(now - waited_since)
            metrics.messages.inc(len(payloads))
            client.check_caught_up(now, now - started)
            if client.conflate_ms:
                await asyncio.sleep(client.conflate_ms / 1000)
