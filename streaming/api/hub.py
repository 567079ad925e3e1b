"""Fan-out of live ticks to websocket clients, with conflation, in the event loop's thread.

Every tick is encoded once (`records.tick_wire_bytes`) and offered to the clients subscribed to
its (exchange, symbol). What a client has not been sent yet waits in one of two bounded forms:

- a queue in arrival order (every tick, in order), at most `max_queue` ticks; or
- conflated: the newest tick per (exchange, symbol) only, so at most one entry per subscribed
  symbol. A client is conflated when it asked for it (`conflate_ms`: at most one update per
  symbol per N ms) or when its queue overflowed (it reads slower than ticks arrive).

Per symbol a client only ever gets newer ticks in exchange order: conflation skips older ones,
it never reorders. A client that was conflated for being slow goes back to the full stream once
it has caught up; one that stays behind for `slow_s` seconds is disconnected (`SlowClient`).
Nothing here grows with time or with a client's slowness beyond those bounds.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from streaming.api.records import tick_wire_bytes

Key = tuple[str, str]        # (exchange, symbol)
# a websocket send that returns this fast met no backpressure: the client reads as fast as we write
FAST_SEND_S = 0.05


class SlowClient(Exception):
    """The client stayed behind the stream for too long."""


@dataclass(eq=False)
class Client:
    exchanges: frozenset[str]
    symbols: frozenset[str] | None          # None: every symbol
    conflate_ms: int = 0
    max_queue: int = 5000
    slow_s: float = 10.0
    queue: deque = field(default_factory=deque)          # (key, payload) in arrival order
    latest: dict = field(default_factory=dict)           # key -> payload, while conflated
    slow_since: float | None = None
    conflated_count: int = 0                              # ticks replaced by newer ones
    closed: bool = False                                  # the client went away
    waiting_since: float | None = None                    # when the oldest unsent tick arrived
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def conflating(self) -> bool:
        return self.conflate_ms > 0 or self.slow_since is not None

    def offer(self, items: list[tuple[Key, bytes]]) -> None:
        """Take ticks (already filtered for this client)."""
        if not items:
            return
        if self.waiting_since is None:
            self.waiting_since = time.monotonic()
        if self.conflating:
            before = len(self.latest)
            self.latest.update(items)
            self.conflated_count += len(items) - (len(self.latest) - before)
        else:
            self.queue.extend(items)
            if len(self.queue) > self.max_queue:
                self._fall_behind()
        self.wake.set()

    def _fall_behind(self) -> None:
        """The queue overflowed: keep only the newest tick per symbol from now on."""
        self.slow_since = time.monotonic()
        self.latest = dict(self.queue)
        self.conflated_count += len(self.queue) - len(self.latest)
        self.queue.clear()

    def take(self, max_items: int) -> list[bytes]:
        """The next payloads to send (queue order, or the conflated newest per symbol)."""
        out = self._take(max_items)
        # what is left waits from now on (an upper bound for a conflated client's newest ticks)
        self.waiting_since = time.monotonic() if self.pending() else None
        return out

    def _take(self, max_items: int) -> list[bytes]:
        if self.latest:
            if len(self.latest) <= max_items:
                out, self.latest = list(self.latest.values()), {}
            else:
                keys = list(self.latest)[:max_items]
                out = [self.latest.pop(k) for k in keys]
            return out
        n = min(max_items, len(self.queue))
        return [self.queue.popleft()[1] for _ in range(n)]

    def pending(self) -> int:
        return len(self.queue) + len(self.latest)

    def check_caught_up(self, now: float, send_s: float) -> None:
        """After a send that took `send_s`: a client conflated for being slow whose socket took
        the frame at once (no backpressure) goes back to the full stream; one that has been
        behind for longer than `slow_s` is dropped."""
        if self.slow_since is None:
            return
        if send_s < FAST_SEND_S and self.pending() < self.max_queue:
            self.slow_since = None      # what is still conflated goes first (take), so order holds
        elif now - self.slow_since > self.slow_s:
            raise SlowClient(f"behind the stream for more than {self.slow_s:.0f}s")


def batch_text(payloads: list[bytes]) -> str:
    """One websocket text frame: a JSON object, or a JSON array of them when batching."""
    if len(payloads) == 1:
        return payloads[0].decode()
    return (b"[" + b",".join(payloads) + b"]").decode()


class Hub:
    """Subscriptions and fan-out. All methods run in the event loop's thread."""

    def __init__(self, metrics=None):
        self.metrics = metrics
        self.everything: set[Client] = set()           # clients of every symbol (maybe one exchange)
        self.by_key: dict[Key, set[Client]] = {}       # clients of a symbol list
        self.clients: set[Client] = set()
        self.ticks_in = 0

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, client: Client) -> None:
        self.clients.add(client)
        if client.symbols is None:
            self.everything.add(client)
        else:
            for ex in client.exchanges:
                for sym in client.symbols:
                    self.by_key.setdefault((ex, sym), set()).add(client)
        self._gauge()

    def remove(self, client: Client) -> None:
        self.clients.discard(client)
        self.everything.discard(client)
        if client.symbols is not None:
            for ex in client.exchanges:
                for sym in client.symbols:
                    subs = self.by_key.get((ex, sym))
                    if subs is not None:
                        subs.discard(client)
                        if not subs:
                            del self.by_key[(ex, sym)]
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.clients.set(len(self.clients))

    def publish(self, ticks) -> None:
        """Offer a batch of ticks (in topic order) to every subscribed client."""
        if not self.clients or not ticks:
            self.ticks_in += len(ticks)
            return
        self.ticks_in += len(ticks)
        items = [((t.exchange, t.symbol), tick_wire_bytes(t)) for t in ticks]
        if self.everything:
            per_filter: dict[frozenset, list] = {}
            for client in self.everything:
                chosen = per_filter.get(client.exchanges)
                if chosen is None:
                    chosen = per_filter[client.exchanges] = [it for it in items if it[0][0] in client.exchanges]
                client.offer(chosen)
        if self.by_key:
            per_client: dict[Client, list] = {}
            for item in items:
                for client in self.by_key.get(item[0], ()):
                    per_client.setdefault(client, []).append(item)
            for client, chosen in per_client.items():
                client.offer(chosen)
