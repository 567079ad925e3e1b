"""Ground truth: every tick written to a websocket, with its connection, and every connection.

A tick is the tuple (exchange, kind, symbol, event_ms, sequence, price) shared by every frame that
carries it; a record is (conn_id, tick, sent_ms, flag) with flag '' (normal), 'dup' (the second
copy of a duplicated frame), 'malformed' or 'truncated' (the frame that carried it was corrupted).
Records live in a bounded ring (`--truth-max`); `oldest_ms` says how far back it still reaches.
"""
from __future__ import annotations

import collections
import time

TICK_COLUMNS = ["exchange", "conn_id", "kind", "symbol", "event_ms", "sequence", "price", "sent_ms", "flag"]


def now_ms() -> int:
    return int(time.time() * 1000)


class Truth:
    def __init__(self, max_records: int = 1_000_000):
        self.max_records = max_records
        self.records: collections.deque = collections.deque(maxlen=max(1, max_records))
        self.enabled = max_records > 0
        self.dropped = 0
        self.total = 0
        self.connections: dict[str, dict] = {}

    def add_many(self, conn_id: str, ticks, sent_ms: int, flag: str = "") -> None:
        if not self.enabled:
            self.total += len(ticks)
            return
        recs = self.records
        room = recs.maxlen - len(recs)
        n = len(ticks)
        if n > room:
            self.dropped += n - room
        recs.extend([(conn_id, tk, sent_ms, flag) for tk in ticks])
        self.total += n

    def oldest_ms(self) -> int | None:
        return self.records[0][2] if self.records else None

    def query(self, exchange=None, since_ms=None, until_ms=None, symbol=None, conn_id=None, kind=None,
              by="event", limit=None) -> list[list]:
        """Rows in TICK_COLUMNS order; the window [since_ms, until_ms] is on event time (by='event')
        or on the time the frame was written (by='sent')."""
        out = []
        for cid, tk, sent, flag in list(self.records):
            ex, k, sym, ev, seq, price = tk
            t = ev if by == "event" else sent
            if exchange and ex != exchange:
                continue
            if since_ms is not None and t < since_ms:
                continue
            if until_ms is not None and t > until_ms:
                continue
            if symbol and sym != symbol:
                continue
            if conn_id and cid != conn_id:
                continue
            if kind and k != kind:
                continue
            out.append([ex, cid, k, sym, ev, seq, price, sent, flag])
            if limit and len(out) >= limit:
                break
        return out

    def open_conn(self, conn_id: str, exchange: str, path: str) -> None:
        self.connections[conn_id] = {"conn_id": conn_id, "exchange": exchange, "path": path,
                                     "opened_ms": now_ms(), "closed_ms": None, "close_reason": None,
                                     "subscriptions": []}

    def close_conn(self, conn_id: str, reason: str) -> None:
        c = self.connections.get(conn_id)
        if c is not None and c["closed_ms"] is None:
            c["closed_ms"] = now_ms()
            c["close_reason"] = reason

    def connections_list(self, exchange=None, since_ms=None, until_ms=None) -> list[dict]:
        out = []
        for c in self.connections.values():
            if exchange and c["exchange"] != exchange:
                continue
            if until_ms is not None and c["opened_ms"] > until_ms:
                continue
            if since_ms is not None and c["closed_ms"] is not None and c["closed_ms"] < since_ms:
                continue
            out.append(dict(c))
        return out
