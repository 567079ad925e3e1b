"""The Batcher (the seed's name): gathers an exchange's frames into one raw record per batch, for
exchanges that send one frame per tick (KuCoin). A Kafka record per tick is paid in the extractor,
Kafka, the transformer and the archiver; a batch of a few hundred frames is paid once.

A batch is handed over when it holds `max_frames` frames or `max_bytes` bytes, or `linger_s`
after its first frame (so a quiet market still flows within the linger), and when its connection
ends. A frame that holds a newline byte is never batched (common.codec.raw): the batch so far is
handed over, then that frame alone. Pure: the connection drives the clock (`due_in`, `take`).
"""
from __future__ import annotations

import time

from common.codec.raw import raw_batch, raw_headers

from .spool import Record


class Batcher:
    def __init__(self, topic: str, conn_id: str, exchange: str, *, linger_s: float = 0.02,
                 max_frames: int = 2000, max_bytes: int = 256 * 1024, clock=time.monotonic):
        self.topic, self.conn_id, self.exchange = topic, conn_id, exchange
        self.linger_s, self.max_frames, self.max_bytes = linger_s, max_frames, max_bytes
        self.clock = clock
        self._frames: list[bytes] = []
        self._bytes = 0
        self._first_ns = 0
        self._last_ns = 0
        self._started = 0.0

    @property
    def pending_since_ns(self) -> int | None:
        """Receive time of the oldest frame not yet handed over (None when empty)."""
        return self._first_ns if self._frames else None

    def add(self, raw: bytes, received_ns: int) -> list[Record]:
        """Take a frame; returns the records to hand over now (full batch, or a newline frame)."""
        out: list[Record] = []
        if b"\n" in raw:
            if self._frames:
                out.append(self.take())
            out.append(Record(self.topic, self.conn_id.encode(), raw,
                              raw_headers(received_ns, self.conn_id, self.exchange), received_ns))
            return out
        if not self._frames:
            self._first_ns, self._started = received_ns, self.clock()
        self._frames.append(raw)
        self._bytes += len(raw) + 1
        self._last_ns = received_ns
        if len(self._frames) >= self.max_frames or self._bytes >= self.max_bytes:
            out.append(self.take())
        return out

    def due_in(self) -> float | None:
        """Seconds until the pending batch must be handed over (None when empty)."""
        if not self._frames:
            return None
        return max(0.0, self._started + self.linger_s - self.clock())

    def take(self) -> Record | None:
        """The pending batch as one record (None when empty)."""
        if not self._frames:
            return None
        frames, first, last = self._frames, self._first_ns, self._last_ns
        self._frames, self._bytes = [], 0
        if len(frames) == 1:
            headers = raw_headers(first, self.conn_id, self.exchange)
            return Record(self.topic, self.conn_id.encode(), frames[0], headers, first)
        value, headers = raw_batch(frames, first, last, self.conn_id, self.exchange)
        return Record(self.topic, self.conn_id.encode(), value, headers, first)
