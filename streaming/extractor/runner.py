"""Keeps an exchange streaming: one slot per shard, each slot keeping one live connection.

- reconnect with jittered exponential backoff (full jitter, capped), reset after a healthy period;
- rotation (age limit, or the exchange asks, e.g. Binance `serverShutdown`): open the new
  connection first; the old one keeps reading until the new one has delivered for a while
  (`rotation_overlap_s`), so coverage has no gap and nothing the old socket had in flight is
  lost (duplicates are removed downstream);
- heartbeats per live connection, sink polling, clean stop on SIGTERM.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass

import aiohttp

from common.exchanges import plug

from .transport import Connection, Options

log = logging.getLogger("cryptopipe.extractor")


@dataclass
class Backoff:
    base_s: float = 0.5
    cap_s: float = 30.0
    healthy_s: float = 60.0          # a connection that lived this long resets the attempt count
    attempt: int = 0

    def next_delay(self, rng: random.Random) -> float:
        delay = rng.uniform(0, min(self.cap_s, self.base_s * (2 ** self.attempt)))
        self.attempt = min(self.attempt + 1, 30)
        return delay

    def lived(self, seconds: float) -> None:
        if seconds >= self.healthy_s:
            self.attempt = 0


class Slot:
    """Keeps one shard covered by exactly one (during rotation: two) live connections."""

    def __init__(self, extractor: "Extractor", spec: list[str], index: int):
        self.x = extractor
        self.spec = spec
        self.index = index
        self.backoff = Backoff(**extractor.backoff_kwargs)
        self.current: Connection | None = None
        self.rotating: Connection | None = None

    def live(self) -> list[Connection]:
        return [c for c in (self.current, self.rotating) if c is not None and c.connected.is_set()
                and not c.done.done()]

    async def run(self) -> None:
        stop = self.x.stop
        while not stop.is_set():
            if self.current is None or self.current.done.done():
                if self.x.sink.full:
                    # nowhere to put frames: stay disconnected until Kafka takes the spool back
                    await asyncio.sleep(0.2)
                    continue
                conn = self.x.new_connection(self.spec, self.index).start()
                self.current = conn
                await _first(conn.connected.wait(), conn.done, stop.wait())
                if stop.is_set():
                    break
                if conn.done.done():
                    await self._pause(conn.done.result())
                    self.current = None
                    continue
            conn = self.current
            age_left = self.x.options.rotate_after_s - (time.monotonic() - (conn.opened_mono or time.monotonic()))
            await _first(conn.done, conn.rotate_wanted.wait(), stop.wait(), asyncio.sleep(max(0.0, age_left)))
            if stop.is_set():
                break
            if conn.done.done():
                self.backoff.lived(time.monotonic() - conn.opened_mono if conn.opened_mono else 0)
                await self._pause(conn.done.result())
                self.current = None
                continue
            await self._rotate(conn)
        await self._close_all("shutdown")

    async def _rotate(self, old: Connection) -> None:
        """New connection first; the old one keeps reading until the new one has delivered for
        `rotation_overlap_s` (or until the exchange closes it), then closes. Both sockets' frames
        go to Kafka (their ticks are the same, duplicates vanish downstream), so every tick the old
        socket had in flight when the new one started is read, and the two sessions' coverage
        overlaps: no time falls between them."""
        reason = "server_shutdown" if old.rotate_wanted.is_set() else "lifetime"
        log.info("%s: rotating (%s)", old.conn_id, reason)
        new = self.x.new_connection(self.spec, self.index).start()
        self.rotating = new
        await _first(new.delivering.wait(), new.done, self.x.stop.wait(),
                     asyncio.sleep(self.x.options.extra.get("rotation_timeout_s", 60.0)))
        if new.delivering.is_set() and not new.done.done():
            old.rotating_out = True
            await _first(old.done, new.done, self.x.stop.wait(), asyncio.sleep(self.x.options.rotation_overlap_s))
            self.rotating = None
            if not new.done.done():
                await old.close("rotated")
                self.current = new
                return
        self.rotating = None
        # the new connection did not come up: keep the old one (if alive) and retry after a pause
        await new.close("rotation_failed")
        if old.done.done():
            self.current = None
        await self._pause("rotation_failed")

    async def _pause(self, reason: str) -> None:
        at_once = reason == "rotated" or reason in self.x.plug.RECONNECT_AT_ONCE
        delay = 0.0 if at_once else self.backoff.next_delay(self.x.rng)
        log.info("slot %d: connection ended (%s); reconnecting in %.2fs", self.index, reason, delay)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.x.stop.wait(), delay)

    async def _close_all(self, reason: str) -> None:
        for conn in (self.rotating, self.current):
            if conn is not None:
                await conn.close(reason)


async def _first(*aws) -> None:
    """Wait until the first of several awaitables finishes; cancel the rest (futures are left alone)."""
    tasks, owned = [], []
    for aw in aws:
        if isinstance(aw, asyncio.Future):
            tasks.append(aw)
        else:
            task = asyncio.ensure_future(aw)
            tasks.append(task)
            owned.append(task)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in owned:
            task.cancel()
        for task in owned:
            with contextlib.suppress(BaseException):
                await task


class Extractor:
    def __init__(self, exchange: str, shards: list[list[str]], sink, events, metrics, options: Options, *,
                 heartbeat_s: float = 5.0, backoff: dict | None = None, seed: int | None = None,
                 label: str = "", scopes: list[list[str] | None] | None = None):
        if label and not all(ch.isalnum() or ch == "-" for ch in label):
            raise ValueError(f"label must be letters, digits and dashes: {label!r:.40}")
        self.label = label
        self.plug = plug(exchange)
        self.exchange = exchange
        self.shards = shards
        self.scopes = scopes if scopes is not None else [None] * len(shards)
        if len(self.scopes) != len(shards):
            raise ValueError(f"{len(self.scopes)} scopes for {len(shards)} shards")
        self.sink = sink
        self.events = events
        self.metrics = metrics
        self.options = options
        self.heartbeat_s = heartbeat_s
        self.backoff_kwargs = backoff or {}
        self.rng = random.Random(seed)
        self.stop = asyncio.Event()
        self.slots: list[Slot] = []
        self.http: aiohttp.ClientSession | None = None

    def new_connection(self, spec: list[str], index: int) -> Connection:
        label = f"{self.label}-{index}" if self.label else str(index)
        return Connection(self.plug, spec, self.sink, self.events, self.metrics, self.options, self.stop, label,
                          scope=self.scopes[index], http=self.http)

    def live_connections(self) -> list[Connection]:
        return [c for slot in self.slots for c in slot.live()]

    async def run(self) -> None:
        """Until `stop` is set; then closes the sockets (each with a `disconnected` event)."""
        self.http = aiohttp.ClientSession()       # for handshakes over REST (KuCoin's bullet token)
        self.slots = [Slot(self, spec, i) for i, spec in enumerate(self.shards)]
        log.info("%s extractor: %d connection(s) for %s", self.exchange, len(self.slots),
                 [len(s) for s in self.shards])
        slot_tasks = [asyncio.create_task(slot.run(), name=f"slot-{slot.index}") for slot in self.slots]
        house = asyncio.create_task(self._housekeeping(), name="housekeeping")
        try:
            await self.stop.wait()
        finally:
            self.stop.set()
            await asyncio.gather(*slot_tasks, return_exceptions=True)
            house.cancel()
            with contextlib.suppress(BaseException):
                await house
            if self.http is not None:
                await self.http.close()

    async def _housekeeping(self) -> None:
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            self.sink.poll()
            now = time.monotonic()
            if now - last_beat >= self.heartbeat_s:
                last_beat = now
                for conn in self.live_connections():
                    self.events.emit("heartbeat", conn.conn_id, frames=conn.frames,
                                     last_data_age_s=round(now - conn.last_data_mono, 3) if conn.last_data_mono
                                     else None, **conn.coverage_detail())
