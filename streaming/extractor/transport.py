"""One websocket connection, whatever the exchange: connect, read every frame into the sink byte
for byte (batched for exchanges that send a frame per tick), detect stalls and dead peers, keep
the coverage (`covered_until_ns`) and the lifecycle events, close.

What differs per exchange - the URL, the handshake, subscriptions, keepalive, what a control
frame means - is the exchange plug's `Session` (common.exchanges), which drives this connection
through the small interface below (`connect`, `recv_handshake`, `send`, `http_post`, `emit`,
`rotate`: common.exchanges.base.Link).

A Connection runs as one task. It exposes asyncio events the runner uses for rotation:
`connected` (socket open / handshake done), `delivering` (first data frame: the new connection
covers the stream), `rotate_wanted` (the exchange asked for it, or the connection's age limit).
`done` resolves with the reason the connection ended.
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
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from common.codec.raw import raw_headers
from common.exchanges import Exchange, SessionEnded
from common.topics import raw_topic

from .batcher import Batcher
from .spool import Record

log = logging.getLogger("cryptopipe.extractor")

# A tick's exchange time may precede the moment its frame reaches us by the exchange's push
# interval (the plugs' PUSH_INTERVAL_MS) plus the network's latency; a connection's coverage ends
# this much before its last safe frame, so whatever was lost after it lies inside the gap.
LATENCY_ALLOWANCE_MS = 1000

# A frame must fit one Kafka record (producer message.max.bytes defaults to 1,000,000, headers and
# key included). A bigger one closes the connection (1009, reason `frame_too_big`): that span is
# then on record as uncovered and gets backfilled, instead of a record Kafka would refuse forever.
MAX_WS_FRAME = 990_000


@dataclass
class Options:
    stall_s: float = 15.0
    rotate_after_s: float = 23 * 3600.0
    open_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    welcome_timeout_s: float = 10.0
    # the exchange endpoints, {settings field: URL} (the plug's url_settings; missing = its live default)
    urls: dict = field(default_factory=dict)
    topic_suffix: str = ""          # private topics (benchmarks, tests): <exchange>_raw_data<suffix>
    # a rotation keeps the old socket reading this long after the new one delivers: longer than the
    # coverage margin (push interval + LATENCY_ALLOWANCE_MS), so the two sessions' coverage overlaps
    rotation_overlap_s: float = 5.0
    # how long a frame may wait in the Batcher (plugs with BATCHED_FRAMES); 0 = no batching
    batch_linger_s: float = 0.02
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
    """One websocket connection of `plug`'s exchange carrying the subscriptions `spec`."""

    def __init__(self, plug: type[Exchange], spec: list[str], sink, events, metrics, options: Options,
                 stop: asyncio.Event, label: str = "", scope: list[str] | None = None, http=None):
        self.plug = plug
        self.exchange = plug.name
        self.push_interval_ms = plug.PUSH_INTERVAL_MS
        self.spec = spec
        # the symbols this connection covers (the plug's shard_scopes); None = all this extractor streams
        self.scope = scope
        self.sink = sink
        self.events = events
        self.metrics = metrics
        self.options = options
        self.stop = stop
        self.http = http               # an aiohttp.ClientSession for handshakes over REST (the extractor's)
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
        # one raw record per batch of frames, for exchanges that send a frame per tick
        self.batcher = (Batcher(self.topic, self.conn_id, self.exchange, linger_s=options.batch_linger_s)
                        if plug.BATCHED_FRAMES and options.batch_linger_s > 0 else None)
        self.uplink = RateLimiter(*plug.UPLINK_LIMIT)
        self.session = plug.session(spec, self)
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
        except SessionEnded as exc:
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
            with contextlib.suppress(Exception):
                await self._flush_batch()
            if self.connected.is_set():
                self.events.emit("disconnected", self.conn_id, reason, frames=self.frames,
                                 seconds=round(time.monotonic() - self.opened_mono, 3),
                                 **self.coverage_detail(time.time_ns() if clean_end else None))
            self.metrics.reconnect(reason)
            if not self.done.done():
                self.done.set_result(reason)

    async def _read_loop(self) -> None:
        """Every frame -> sink, in order (one record per frame, or per batch: BATCHED_FRAMES);
        stall when no data frame for `stall_s`."""
        ws, stall_s, batcher = self.ws, self.options.stall_s, self.batcher
        while True:
            remaining = self.last_data_mono + stall_s - time.monotonic()
            if remaining <= 0:
                self.events.emit("stalled", self.conn_id, "no_data", seconds=stall_s)
                raise SessionEnded("stall")
            due = batcher.due_in() if batcher is not None else None
            try:
                # asyncio.timeout, not wait_for: wait_for wraps every recv in a new Task (measured
                # ~3x the cost per frame, and KuCoin sends one frame per tick)
                async with asyncio.timeout(remaining if due is None else min(remaining, due)):
                    raw = await ws.recv(decode=False)
            except TimeoutError:
                if due is not None and batcher.due_in() == 0.0:
                    await self._hand_over(batcher.take())
                continue
            received_ns = time.time_ns()
            if isinstance(raw, str):       # defensive: binary frames arrive as bytes already
                raw = raw.encode()
            if batcher is None:
                await self._hand_over(Record(self.topic, self.conn_id.encode(), raw,
                                             raw_headers(received_ns, self.conn_id, self.exchange), received_ns))
            else:
                for record in batcher.add(raw, received_ns):
                    await self._hand_over(record)
            self.frames += 1
            self._frame_ns = received_ns
            self._on_frame(raw, received_ns)

    async def _hand_over(self, record: Record) -> None:
        if not self.sink.offer(record):
            # spool full: the record in hand takes the events' reserve (it was received, it is
            # never dropped); then this connection stops reading and ends, so the uncovered
            # span is on record (`disconnected` reason spool_full) and gets backfilled
            if not self.sink.offer(record, event=True) and not await self.sink.put(record, self.stop):
                raise SessionEnded("shutdown")
            raise SessionEnded("spool_full")

    async def _flush_batch(self) -> None:
        """Hand over what the batcher holds (the connection is ending): never dropped."""
        record = self.batcher.take() if self.batcher is not None else None
        if record is not None and not self.sink.offer(record) and not self.sink.offer(record, event=True):
            await self.sink.put(record, self.stop)

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
        safe_through = self.sink.safe_through_ns()
        held = self.batcher.pending_since_ns if self.batcher is not None else None
        if held is not None:
            safe_through = min(safe_through, held - 1)       # read, still in the Batcher's memory
        if clean_end_ns is not None:
            return {"covered_until_ns": min(clean_end_ns, safe_through)}
        safe = min(self.last_data_ns, safe_through)
        return {"covered_until_ns": safe - (self.push_interval_ms + LATENCY_ALLOWANCE_MS) * 1_000_000}

    # ------------------------------------------------------------------ driven by the plug's session

    async def _open(self) -> None:
        detail = await self.session.open()
        self.connected.set()
        self.events.emit("connected", self.conn_id, **detail, **self._scope_detail())

    async def _session(self) -> None:
        """The read loop beside the session's steps (subscriptions, keepalive); whichever fails
        first ends the connection. Steps that finish leave the read loop running alone."""
        reader = asyncio.create_task(self._read_loop(), name=f"{self.conn_id}-read")
        steps = asyncio.create_task(self.session.run(), name=f"{self.conn_id}-steps")
        try:
            done, _ = await asyncio.wait({reader, steps}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()                   # raises the reason
            await reader
        finally:
            for task in (reader, steps):
                task.cancel()
            for task in (reader, steps):
                with contextlib.suppress(BaseException):
                    await task

    def _on_frame(self, raw: bytes, received_ns: int) -> None:
        ctl = self.plug.classify(raw)
        if ctl.kind == "data":
            self._data(self.plug.tick_count(raw), len(raw))
        elif ctl.kind == "malformed":
            log.warning("%s: malformed frame (forwarded as received): %r", self.conn_id, raw[:120])
        else:
            self.session.on_control(ctl)

    def _data(self, ticks: int, size: int) -> None:
        self.last_data_mono = time.monotonic()
        self.last_data_ns = self._frame_ns
        self.metrics.frame(size, ticks)
        if not self.delivering.is_set():
            self.delivering.set()
            self.session.on_first_data()

    # ------------------------------------------------------------------ the Link a session drives

    async def connect(self, url: str) -> None:
        # the connection id rides along as a header exchanges ignore: a server that logs it (the
        # simulator does) ties each socket it served to the session this extractor recorded
        self.ws = await ws_connect(url, max_size=MAX_WS_FRAME, open_timeout=self.options.open_timeout_s,
                                   close_timeout=2, ping_interval=None, max_queue=64, compression=None,
                                   additional_headers={"X-Cryptopipe-Conn-Id": self.conn_id})

    async def recv_handshake(self, timeout_s: float) -> bytes:
        """One frame before the read loop starts (e.g. a welcome), kept like every frame."""
        raw = await asyncio.wait_for(self.ws.recv(decode=False), timeout_s)
        received_ns = time.time_ns()
        await self.sink.put(Record(self.topic, self.conn_id.encode(), raw,
                                   raw_headers(received_ns, self.conn_id, self.exchange), received_ns), self.stop)
        self.frames += 1
        return raw

    async def send(self, text: str) -> None:
        await self.uplink.wait()
        await self.ws.send(text)

    async def http_post(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        async with self.http.post(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status, await resp.read()

    def emit(self, kind: str, **detail) -> None:
        self.events.emit(kind, self.conn_id, **detail)

    def rotate(self) -> None:
        self.rotate_wanted.set()
