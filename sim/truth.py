"""Ground truth: every tick written to a websocket, with its connection, and every connection.

A tick is recorded just before its frame is written, so everything a client received is in the
truth; only the last frame(s) written as a connection died may be recorded yet not received.

A tick is the tuple (exchange, kind, symbol, event_ms, sequence, price) shared by every frame that
carries it; a record is (conn_id, tick, sent_ms, flag) with flag '' (normal), 'dup' (the second
copy of a duplicated frame), 'malformed' or 'truncated' (the frame that carried it was corrupted).
Records live in a bounded ring (`--truth-max`); `oldest_ms` says how far back it still reaches.

With `--truth-dir DIR` every record is also appended, about once a second, to
`DIR/ticks-YYYYMMDD-HH.jsonl` (UTC hour of sending; one JSON array per line in TICK_COLUMNS order;
files older than `--truth-keep-hours` are deleted)
and every connection open/close to `DIR/connections.jsonl` (one JSON object per event), so long
runs can be checked after the ring has moved on. The spool between the writer and the files is
bounded (`SPOOL_MAX` records); records it had to drop are counted in `spool_dropped`.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import time
from pathlib import Path

TICK_COLUMNS = ["exchange", "conn_id", "kind", "symbol", "event_ms", "sequence", "price", "sent_ms", "flag"]


SPOOL_MAX = 2_000_000
EVENT_SLACK_MS = 120_000    # event time vs send time: connection queues hold at most ~20 s
log = logging.getLogger("sim")


def now_ms() -> int:
    return int(time.time() * 1000)


class Truth:
    def __init__(self, max_records: int = 1_000_000, truth_dir: str | None = None, keep_hours: float = 24.0):
        self.max_records = max_records
        self.keep_hours = keep_hours
        self.dir = Path(truth_dir) if truth_dir else None
        self.spool: list = []
        self.conn_events: list[dict] = []
        self.spool_dropped = 0
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.records: collections.deque = collections.deque(maxlen=max(1, max_records))
        self.enabled = max_records > 0
        self.dropped = 0
        self.total = 0
        self.connections: dict[str, dict] = {}

    def add_many(self, conn_id: str, ticks, sent_ms: int, flag: str = "") -> None:
        if self.dir is not None:
            if len(self.spool) < SPOOL_MAX:
                self.spool.append((conn_id, ticks, sent_ms, flag))
            else:
                self.spool_dropped += len(ticks)
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
        recs = self.records
        start = 0
        if since_ms is not None and recs:
            # records are (nearly: writers interleave) in send order, and an event is never more than
            # EVENT_SLACK_MS older than its send: start the scan there instead of at the oldest
            lo, hi = 0, len(recs)
            bound = since_ms - (10_000 if by == "sent" else EVENT_SLACK_MS)
            while lo < hi:
                mid = (lo + hi) // 2
                if recs[mid][2] < bound:
                    lo = mid + 1
                else:
                    hi = mid
            start = lo
        # no await below: writers cannot append while this runs
        for cid, tk, sent, flag in itertools.islice(recs, start, None):
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

    MAX_CONNECTIONS = 50_000   # the registry forgets the oldest closed connections beyond this

    def open_conn(self, conn_id: str, exchange: str, path: str, **extra) -> dict:
        """Register a connection; returns its record, whose counters the connection's writer keeps:
        ticks_sent (= its truth records, copies of duplicated frames and corrupted frames included),
        ticks_flagged ({flag: ticks}), data_frames_sent, frames_sent (every text frame: data,
        replies, welcome, events), first_sent_ms/last_sent_ms (of its ticks), notice/notice_ms
        (serverShutdown or token expiry announced on it). `extra`: client_conn_id, connect_id."""
        if len(self.connections) >= self.MAX_CONNECTIONS:
            for cid in [c for c, v in self.connections.items() if v["closed_ms"] is not None][:1000]:
                del self.connections[cid]
        rec = self.connections[conn_id] = {
            "conn_id": conn_id, "exchange": exchange, "path": path, "opened_ms": now_ms(), "closed_ms": None,
            "close_reason": None, "subscriptions": [], "ticks_sent": 0, "ticks_flagged": {},
            "data_frames_sent": 0, "frames_sent": 0, "first_sent_ms": None, "last_sent_ms": None,
            "notice": None, "notice_ms": None, "client_conn_id": None, **extra}
        if self.dir is not None:
            self.conn_events.append({"event": "open", **rec})
        return rec

    def close_conn(self, conn_id: str, reason: str) -> None:
        c = self.connections.get(conn_id)
        if c is not None and c["closed_ms"] is None:
            c["closed_ms"] = now_ms()
            c["close_reason"] = reason
            if self.dir is not None:
                self.conn_events.append({"event": "close", **c, "ticks_flagged": dict(c["ticks_flagged"])})

    def connections_list(self, exchange=None, since_ms=None, until_ms=None, client_conn_id=None) -> list[dict]:
        out = []
        for c in self.connections.values():
            if exchange and c["exchange"] != exchange:
                continue
            if client_conn_id and c["client_conn_id"] != client_conn_id:
                continue
            if until_ms is not None and c["opened_ms"] > until_ms:
                continue
            if since_ms is not None and c["closed_ms"] is not None and c["closed_ms"] < since_ms:
                continue
            out.append(dict(c, ticks_flagged=dict(c["ticks_flagged"]), subscriptions=list(c["subscriptions"])))
        return out

    def flush_files(self) -> int:
        """Append spooled records to the truth files; returns the number of ticks written."""
        if self.dir is None:
            return 0
        spool, self.spool = self.spool, []
        events, self.conn_events = self.conn_events, []
        n = 0
        files: dict[str, list[str]] = collections.defaultdict(list)
        for conn_id, ticks, sent, flag in spool:
            name = "ticks-" + time.strftime("%Y%m%d-%H", time.gmtime(sent / 1000)) + ".jsonl"
            lines = files[name]
            for ex, kind, sym, ev, seq, price in ticks:
                lines.append(json.dumps([ex, conn_id, kind, sym, ev, seq, price, sent, flag], separators=(",", ":")))
            n += len(ticks)
        for name, lines in files.items():
            with open(self.dir / name, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        if events:
            with open(self.dir / "connections.jsonl", "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events))
        self.prune_files()
        return n

    def prune_files(self) -> None:
        """Delete hourly tick files older than keep_hours (a long `make up SOURCE=sim` stays bounded)."""
        if not self.keep_hours:
            return
        oldest = time.strftime("%Y%m%d-%H", time.gmtime(time.time() - self.keep_hours * 3600))
        for f in self.dir.glob("ticks-*.jsonl"):
            if f.name[len("ticks-"):-len(".jsonl")] < oldest:
                f.unlink(missing_ok=True)

    async def run_flusher(self, every_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                self.flush_files()
            except OSError:
                log.exception("cannot write ground truth to %s", self.dir)
