"""Writes one loader batch to Postgres in one transaction, on one connection (reconnects when it
breaks): ticks (COPY, then the fast path or, on a duplicate, the slow path), the candles and
latest prices they make, sessions, dead letters, and the Kafka offsets the batch covers."""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import psycopg2
import psycopg2.errors
import psycopg2.extras

from common.db import connect

from . import sql
from .records import Batch

log = logging.getLogger("streaming.loader")


class Replayed(Exception):
    """The batch's offsets are already in Postgres (a replay, or a zombie after a rebalance): the
    transaction was rolled back; the loader seeks to the stored offsets."""


@dataclass
class BatchResult:
    ticks_in: int = 0
    ticks_inserted: int = 0
    candles_touched: int = 0
    latest_updated: int = 0
    sessions: int = 0
    dead_letters: int = 0
    partitions_created: int = 0
    slow_path: bool = False            # a duplicate tripped the primary key: merged row by row


@dataclass(frozen=True)
class Offsets:
    """The Kafka offsets one batch covers, per (topic, partition): first read and next to read."""
    group: str
    first: dict[tuple[str, int], int]
    next: dict[tuple[str, int], int]

    @classmethod
    def of(cls, group: str, messages) -> "Offsets":
        first: dict[tuple[str, int], int] = {}
        nxt: dict[tuple[str, int], int] = {}
        for m in messages:
            key, off = (m.topic(), m.partition()), m.offset()
            if off < first.get(key, off + 1):
                first[key] = off
            if off + 1 > nxt.get(key, -1):
                nxt[key] = off + 1
        return cls(group, first, nxt)


def _us(ns: int | None) -> int | None:
    return None if ns is None else ns // 1000


@dataclass
class TickWriter:
    dsn: str | None = None
    _conn: object = None
    _known_days: set = field(default_factory=set)

    def conn(self):
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
            with self._conn, self._conn.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
                cur.execute(sql.CREATE_STAGE)
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def ensure_partitions(self, day_numbers: set[int]) -> int:
        """Create the daily partitions (days since epoch) not known to exist; own transaction."""
        missing = sorted(day_numbers - self._known_days)
        if not missing:
            return 0
        conn = self.conn()
        with conn, conn.cursor() as cur:
            cur.execute(sql.ENSURE_PARTITIONS, (missing,))
            created = cur.fetchone()[0]
        self._known_days.update(missing)
        return created

    def stored_offsets(self, group: str, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Where the group's batches stored in Postgres end, for `partitions` (those with a row)."""
        if not partitions:
            return {}
        conn = self.conn()
        with conn, conn.cursor() as cur:
            cur.execute(sql.STORED_OFFSETS, (group, [t for t, _ in partitions], [p for _, p in partitions]))
            return {(t, p): o for t, p, o in cur.fetchall()}

    def write(self, batch: Batch, offsets: Offsets | None = None) -> BatchResult:
        """One transaction: ticks (and their candles and latest prices), sessions, dead letters,
        and, when given, the offsets the batch covers (Replayed if they were stored already)."""
        result = BatchResult(ticks_in=len(batch.lines), sessions=len(batch.sessions),
                             dead_letters=len(batch.dead_letters))
        if batch.lines:
            result.partitions_created = self.ensure_partitions(batch.days)
        conn = self.conn()
        try:
            with conn, conn.cursor() as cur:
                if offsets is not None:
                    self._advance_offsets(cur, offsets)
                if batch.lines:
                    self._write_ticks(cur, batch.lines, result)
                if batch.sessions:
                    rows = [(cid, s.exchange, _us(s.connected_ns if s.connected_ns is not None else s.first_seen_ns),
                             _us(s.subscribed_ns), _us(s.last_seen_ns), _us(s.disconnected_ns), s.reason,
                             s.symbols, _us(s.covered_until_ns))
                            for cid, s in sorted(batch.sessions.items())]
                    psycopg2.extras.execute_values(cur, sql.UPSERT_SESSIONS, rows, template=sql.SESSION_TEMPLATE,
                                                   page_size=1000)
                if batch.dead_letters:
                    psycopg2.extras.execute_values(cur, sql.INSERT_DEAD_LETTERS, list(batch.dead_letters),
                                                   template=sql.DEAD_LETTER_TEMPLATE, page_size=1000)
        except (psycopg2.errors.UndefinedTable, psycopg2.errors.CheckViolation):
            # a partition we believed in was dropped (retention: "no partition of relation found
            # for row") or the temp table vanished: forget what we knew and let the retry recreate
            self._known_days.clear()
            self.close()
            raise
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self.close()
            raise
        return result

    @staticmethod
    def _write_ticks(cur, lines: list[str], result: BatchResult) -> None:
        cur.copy_expert(sql.COPY_STAGE, io.StringIO("\n".join(lines) + "\n"))
        cur.execute("SAVEPOINT fast_path")
        try:
            cur.execute(sql.INSERT_TICKS)
            cur.execute(sql.FOLD_STAGED)
        except psycopg2.errors.UniqueViolation:
            # the same tick twice (read from two sockets during a rotation, or sent twice by the
            # exchange): insert what is new and fold only that
            cur.execute("ROLLBACK TO SAVEPOINT fast_path")
            cur.execute(sql.MERGE_STAGED)
            result.slow_path = True
        result.ticks_inserted, result.candles_touched, result.latest_updated = cur.fetchone()

    @staticmethod
    def _advance_offsets(cur, offsets: Offsets) -> None:
        keys = sorted(offsets.next)
        topics, parts = [t for t, _ in keys], [p for _, p in keys]
        cur.execute(sql.ENSURE_OFFSET_ROWS, (offsets.group, topics, parts, [offsets.first[k] for k in keys]))
        cur.execute(sql.LOCK_OFFSETS, (offsets.group, topics, parts))
        stored = {(t, p): o for t, p, o in cur.fetchall()}
        behind = {k: stored.get(k) for k in keys if stored.get(k) is None or stored[k] > offsets.first[k]}
        if behind:
            raise Replayed(f"offsets already stored past this batch: {sorted(behind.items())[:3]}")
        cur.execute(sql.SET_OFFSETS, (topics, parts, [offsets.next[k] for k in keys], offsets.group))

    def drop_expired_partitions(self, retention_days: int) -> int:
        conn = self.conn()
        with conn, conn.cursor() as cur:
            cur.execute(sql.DROP_PARTITIONS, (retention_days,))
            dropped = cur.fetchone()[0]
        self._known_days.clear()
        return dropped
