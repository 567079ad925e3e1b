"""One websocket connection per exchange protocol: connect, handshake, read every frame into the
sink byte for byte, answer the protocol (KuCoin pings, acks), detect stalls and dead peers.

A Connection runs as one task. It exposes asyncio events the runner uses for rotation:
`connected` (socket open / welcome received), `delivering` (first data frame: the new connection
covers the stream), `rotate_wanted` (serverShutdown, or the connection's age limit). `done`
resolves with the reason the connection ended.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from common.codec.raw import raw_headers
from common.topics import raw_topic
from streaming.exchanges import Binance, KuCoin

from .spool import Record

log = logging.getLogger("cryptopipe.extractor")

# A tick's exchange time may precede the moment its frame reaches us by the exchange's push
# interval (the adapters' PUSH_INTERVAL_MS) plus the network's latency; a connection's coverage ends
# this much before its last safe frame, so whatever was lost after it lies inside the gap.
LATENCY_ALLOWANCE_MS = 1000

# A frame must fit one Kafka record (producer message.max.bytes defaults to 1,000,000, headers and
# key included). A bigger one closes the connection (1009, reason `frame_too_big`): that span is
# then on record as uncovered and gets backfilled, instead of a record Kafka would refuse forever.
MAX_WS_FRAME = 990_000


class ConnectionEnded(Exception):
    """Ends a connection with a machine-readable reason (stall, pong_timeout, token_expired, ...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Options:
    stall_s: float = 15.0
    rotate_after_s: float = 23 * 3600.0
    open_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    welcome_timeout_s: float = 10.0
    streams_per_connection: int = Binance.MAX_STREAMS_PER_CONNECTION
    topics_per_connection: int = KuCoin.MAX_TOPICS_PER_CONNECTION
    binance_ws_url: str = ""
    kucoin_rest_url: str = ""
    topic_suffix: str = ""          # private topics (benchmarks, tests): <exchange>_raw_data<suffix>
    # a rotation keeps the old socket reading this long after the new one delivers: longer than the
    # coverage margin (push interval + LATENCY_ALLOWANCE_MS), so the two sessions' coverage overlaps
    rotation_overlap_s: float = 5.0
    extra: dict = field(default_factory=dict)


class RateLimiter:
    """At most `limit` sends in any `window_s` seconds (sliding window); `wait()` before sending."""

    def __init__(self, limit: int, window_s: float):
        self.limit = limit
        self.window_s = window_s
        self._sent: deque[float] = deque()

    async def wait(self) -> None:
        while True:
            now = time.monotonic()
            while self._sent and now - self._sent[0] >= self.window_s:
                self._sent.popleft()
            if len(self._sent) < self.limit:
                self._sent.append(now)
                return
            await asyncio.sleep(self.window_s - (now - self._sent[0]) + 0.001)


class Connection:
    exchange = ""
    push_interval_ms = 0

    def __init__(self, spec: list[str], sink, events, metrics, options: Options, stop: asyncio.Event,
                 label: str = "", scope: list[str] | None = None):
        self.spec = spec
        # the symbols this connection covers (runner.shard_scopes); None = all this extractor streams
        self.scope = scope
        self.sink = sink
        self.events = events
        self.metrics = metrics
        self.options = options
        self.stop = stop
        self.conn_id = f"{self.exchange[:2]}-{label}{'-' if label else ''}{uuid.uuid4().hex[:12]}"
        self.topic = raw_topic(self.exchange) + options.topic_suffix
        self.connected = asyncio.Event()
        self.delivering = asyncio.Event()
        self.rotate_wanted = asyncio.Event()
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.opened_mono = 0.0
        self.last_data_mono = 0.0
        self.last_data_ns = 0          # receive time of the newest data frame
        self.rotating_out = False      # its replacement delivers: it reads on until it closes
        self._frame_ns = 0
        self.frames = 0
        self.ws = None
        self._task: asyncio.Task | None = None
        self._close_reason: str | None = None

    def _scope_detail(self) -> dict:
        return {} if self.scope is None else {"symbols": list(self.scope)}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Connection":
        self._task = asyncio.create_task(self._run(), name=self.conn_id)
        return self

    async def close(self, reason: str) -> str:
        """Close from our side (rotation, shutdown) and wait for the task to finish."""
        if self._close_reason is None:
            self._close_reason = reason
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2.0)
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 3.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - force it
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        return self.done.result() if self.done.done() else reason

    async def _run(self) -> None:
        reason = "closed"
        clean_end = False               # the exchange closed it: its close frame came after all its data
        try:
            await self._open()
            self.opened_mono = self.last_data_mono = time.monotonic()
            self.metrics.connections.inc()
            try:
                await self._session()
            finally:
                self.metrics.connections.dec()
        except ConnectionEnded as exc:
            reason = exc.reason
        except ConnectionClosed as exc:
            rcvd, sent = exc.rcvd, exc.sent
            clean_end = rcvd is not None and self._close_reason is None and (sent is None or sent.code != 1009)
            if sent is not None and sent.code == 1009:
                reason = "frame_too_big"
            else:
                reason = f"server_closed:{rcvd.code}" if rcvd is not None else "connection_lost"
        except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI, aiohttp.ClientError) as exc:
            reason = f"connect_failed:{type(exc).__name__}"
            log.warning("%s: %s %s", self.conn_id, reason, str(exc)[:200])
        except asyncio.CancelledError:
            reason = "cancelled"
        except Exception as exc:  # noqa: BLE001 - any bug ends this connection, not the process
            reason = f"error:{type(exc).__name__}"
            log.exception("%s: unexpected error", self.conn_id)
        finally:
            if self._close_reason is not None and (reason.startswith("server_closed:100") or reason in
                                                   ("closed", "cancelled", "connection_lost")):
                reason = self._close_reason
            elif self.rotating_out and reason.startswith("server_closed:100"):
                reason = "rotated"        # the exchange ended it during the overlap: the planned end
            if self.ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(), 2.0)
            if self.connected.is_set():
                self.events.emit("disconnected", self.conn_id, reason, frames=self.frames,
                                 seconds=round(time.monotonic() - self.opened_mono, 3),
                                 **self.coverage_detail(time.time_ns() if clean_end else None))
            self.metrics.reconnect(reason)
            if not self.done.done():
                self.done.set_result(reason)

    async def _connect(self, url: str):
        self.ws = await connect(url, max_size=MAX_WS_FRAME, open_timeout=self.options.open_timeout_s,
                                close_timeout=2, ping_interval=None, max_queue=64, compression=None)
        return self.ws

    async def _read_loop(self) -> None:
        """Every frame -> sink, in order; stall when no data frame for `stall_s`."""
        ws, stall_s = self.ws, self.options.stall_s
        while True:
            remaining = self.last_data_mono + stall_s - time.monotonic()
            if remaining <= 0:
                self.events.emit("stalled", self.conn_id, "no_data", seconds=stall_s)
                raise ConnectionEnded("stall")
            try:
                # asyncio.timeout, not wait_for: wait_for wraps every recv in a new Task (measured
                # ~3x the cost per frame, and KuCoin sends one frame per tick)
                async with asyncio.timeout(remaining):
                    raw = await ws.recv(decode=False)
            except TimeoutError:
                continue
            received_ns = time.time_ns()
            if isinstance(raw, str):       # defensive: binary frames arrive as bytes already
                raw = raw.encode()
            record = Record(self.topic, self.conn_id.encode(), raw,
                            raw_headers(received_ns, self.conn_id, self.exchange), received_ns)
            if not self.sink.offer(record):
                # spool full: the frame in hand takes the events' reserve (it was received, it is
                # never dropped); then this connection stops reading and ends, so the uncovered
                # span is on record (`disconnected` reason spool_full) and gets backfilled
                if not self.sink.offer(record, event=True) and not await self.sink.put(record, self.stop):
                    raise ConnectionEnded("shutdown")
                self.frames += 1
                raise ConnectionEnded("spool_full")
            self.frames += 1
            self._frame_ns = received_ns
            self._on_frame(raw, received_ns)

    def coverage_detail(self, clean_end_ns: int | None = None) -> dict:
        """`covered_until_ns` for this connection's events: every tick the exchange sent on it
        with an exchange time before that is in Kafka or the spool.

        While the socket lives, or when it ended any other way, what was in flight after the
        newest frame read may be lost, and those ticks' exchange times can precede that frame's
        receipt by the push interval plus latency: the coverage ends that much earlier
        (LATENCY_ALLOWANCE_MS). When the exchange closed it (`clean_end_ns`: its close frame
        arrived, after every data frame it sent), it covered until then. Either way never past
        what is safe from a kill -9 (KafkaSink.safe_through_ns). Empty before the first data frame
        (the session then covers nothing it can vouch for)."""
        if not self.last_data_ns:
            return {}
        if clean_end_ns is not None:
            return {"covered_until_ns": min(clean_end_ns, self.sink.safe_through_ns())}
        safe = min(self.last_data_ns, self.sink.safe_through_ns())
        return {"covered_until_ns": safe - (self.push_interval_ms + LATENCY_ALLOWANCE_MS) * 1_000_000}

    # exchange specifics
    async def _open(self) -> None:
        raise NotImplementedError

    async def _session(self) -> None:
        raise NotImplementedError

    def _on_frame(self, raw: bytes, received_ns: int) -> None:
        raise NotImplementedError

    def _data(self, ticks: int, size: int) -> None:
        self.last_data_mono = time.monotonic()
        self.last_data_ns = self._frame_ns
        self.metrics.frame(size, ticks)
        if not self.delivering.is_set():
            self.delivering.set()
            self._first_data()

    def _first_data(self) -> None:
        pass


class BinanceConnection(Connection):
    """`$BINANCE_WS_URL/stream?streams=...`; pings are answered by the websockets library (the pong
    echoes the ping's payload); `serverShutdown` asks the runner for a rotation."""

    exchange = "binance"
    push_interval_ms = Binance.PUSH_INTERVAL_MS

    async def _open(self) -> None:
        url = Binance.combined_url(self.options.binance_ws_url, self.spec)
        await self._connect(url)
        self.connected.set()
        self.events.emit("connected", self.conn_id, streams=len(self.spec), url=url.split("?")[0],
                         **self._scope_detail())
        self._subscribe_by_message = url.endswith("/stream") and bool(self.spec)

    async def _session(self) -> None:
        if not self._subscribe_by_message:
            await self._read_loop()
            return
        reader = asyncio.create_task(self._read_loop())
        try:
            limiter = RateLimiter(Binance.MAX_MESSAGES_PER_SECOND - 1, 1.0)   # stay under 5/s
            for i in range(0, len(self.spec), 200):
                await limiter.wait()
                await self.ws.send(Binance.subscribe_message(self.spec[i:i + 200], i // 200 + 1))
            await reader
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    def _on_frame(self, raw: bytes, received_ns: int) -> None:
        kind, detail = Binance.classify(raw)
        if kind == "data":
            self._data(raw.count(b'"e":"24hr') or raw.count(b'"s":'), len(raw))
        elif kind == "server_shutdown":
            log.info("%s: serverShutdown received: rotating", self.conn_id)
            self.rotate_wanted.set()
        elif kind == "error":
            log.error("%s: error reply %s", self.conn_id, str(detail)[:200])
            raise ConnectionEnded("subscribe_error")
        elif kind == "malformed":
            log.warning("%s: malformed frame (forwarded as received): %r", self.conn_id, raw[:120])

    def _first_data(self) -> None:
        # Binance covers time from the first data frame (there is no subscribe ack on URL streams)
        self.events.emit("subscribed", self.conn_id, streams=len(self.spec))


class KuCoinConnection(Connection):
    """bullet-public -> token; connect with a fresh connectId; wait for `welcome`; subscribe (<= 100
    topics per message, each ack awaited); ping every pingInterval, a missing pong within
    pingTimeout kills the connection; `error` 401 = token expired -> reconnect with a new token."""

    exchange = "kucoin"
    push_interval_ms = KuCoin.PUSH_INTERVAL_MS

    def __init__(self, *args, http: aiohttp.ClientSession | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = http
        self.bullet = None
        self.limiter = RateLimiter(KuCoin.MAX_UPLINK_PER_10S - 10, 10.0)   # under 100 per 10 s
        self._ids = iter(range(1, 1 << 62))
        self._acks: dict[str, asyncio.Future] = {}
        self._pong: asyncio.Future | None = None

    async def _fetch_bullet(self):
        url = KuCoin.bullet_url(self.options.kucoin_rest_url)
        timeout = aiohttp.ClientTimeout(total=self.options.open_timeout_s)
        async with self.http.post(url, timeout=timeout) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise ConnectionEnded(f"bullet_http_{resp.status}")
        try:
            return KuCoin.parse_bullet(body)
        except ValueError as exc:
            log.warning("%s: %s", self.conn_id, exc)
            raise ConnectionEnded("bullet_error") from None

    async def _open(self) -> None:
        self.bullet = await self._fetch_bullet()                  # a new token on every connection
        connect_id = self.conn_id            # KuCoin echoes it in `welcome`; also ties logs together
        await self._connect(KuCoin.ws_url(self.bullet.endpoint, self.bullet.token, connect_id))
        raw = await asyncio.wait_for(self.ws.recv(decode=False), self.options.welcome_timeout_s)
        received_ns = time.time_ns()
        await self.sink.put(Record(self.topic, self.conn_id.encode(), raw,
                                   raw_headers(received_ns, self.conn_id, self.exchange), received_ns), self.stop)
        self.frames += 1
        ctl = KuCoin.classify(raw)
        if ctl.kind == "error":
            raise ConnectionEnded("token_expired" if ctl.token_expired else f"error_{ctl.code}")
        if ctl.kind != "welcome":
            raise ConnectionEnded(f"no_welcome:{ctl.kind}")
        if ctl.id != connect_id:
            log.warning("%s: welcome id %r is not our connectId", self.conn_id, ctl.id)
        self.connected.set()
        self.events.emit("connected", self.conn_id, topics=len(self.spec), **self._scope_detail(),
                         ping_interval_s=self.bullet.ping_interval_s, ping_timeout_s=self.bullet.ping_timeout_s)

    async def _session(self) -> None:
        reader = asyncio.create_task(self._read_loop(), name=f"{self.conn_id}-read")
        pinger = asyncio.create_task(self._subscribe_then_ping(), name=f"{self.conn_id}-ping")
        try:
            done, _ = await asyncio.wait({reader, pinger}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()                   # raises the reason
        finally:
            for task in (reader, pinger):
                task.cancel()
            for task in (reader, pinger):
                with contextlib.suppress(BaseException):
                    await task

    async def _send(self, text: str) -> None:
        await self.limiter.wait()
        await self.ws.send(text)

    async def _subscribe_then_ping(self) -> None:
        for topic in self.spec:
            req_id = str(next(self._ids))
            fut = asyncio.get_running_loop().create_future()
            self._acks[req_id] = fut
            await self._send(KuCoin.subscribe_message(topic, req_id))
            try:
                await asyncio.wait_for(fut, self.options.ack_timeout_s)
            except asyncio.TimeoutError:
                raise ConnectionEnded("ack_timeout") from None
            finally:
                self._acks.pop(req_id, None)
        self.events.emit("subscribed", self.conn_id, topics=sum(KuCoin.topic_count(t) for t in self.spec))
        interval, timeout = self.bullet.ping_interval_s, self.bullet.ping_timeout_s
        while True:
            await asyncio.sleep(interval)
            req_id = str(next(self._ids))
            self._pong = asyncio.get_running_loop().create_future()
            await self._send(KuCoin.ping_message(req_id))
            try:
                await asyncio.wait_for(self._pong, timeout)
            except asyncio.TimeoutError:
                raise ConnectionEnded("pong_timeout") from None

    def _on_frame(self, raw: bytes, received_ns: int) -> None:
        ctl = KuCoin.classify(raw)
        if ctl.kind == "message":
            self._data(1, len(raw))
        elif ctl.kind == "pong":
            if self._pong is not None and not self._pong.done():
                self._pong.set_result(True)
        elif ctl.kind == "ack":
            fut = self._acks.get(ctl.id or "")
            if fut is not None and not fut.done():
                fut.set_result(True)
        elif ctl.kind == "error":
            if ctl.token_expired:
                raise ConnectionEnded("token_expired")
            fut = self._acks.get(ctl.id or "")
            log.error("%s: error frame code=%s data=%.120s", self.conn_id, ctl.code, str(ctl.data))
            if fut is not None and not fut.done():
                raise ConnectionEnded(f"subscribe_error_{ctl.code}")
        elif ctl.kind == "malformed":
            log.warning("%s: malformed frame (forwarded as received): %r", self.conn_id, raw[:120])
