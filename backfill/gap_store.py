"""The `gaps` table: the life of a gap, open -> backfilling -> filled | failed.

A gap is a span of whole minutes of one exchange (`symbol` NULL: every symbol the exchange
lists, see backfill.markets.gap_symbols) that the stored history is missing or may have wrong.
Detection (backfill.detect) records them; fills (backfill.fill) claim and settle them.

- `list_gaps(status=None, exchange=None, limit=100)` newest first; `open_gaps(exchange, limit)`
  oldest first; `get_gap(id)`.
- `claim(id) -> bool`: open|failed -> backfilling, atomically (False: someone else has it).
- `mark(id, status, *, rows_filled=, error=, permanent=)`: a validated transition (TRANSITIONS).
  A `failed` gap counts an attempt and is reopened by `reopen_failed` after a backoff (5 min,
  doubling, at most 2 h, MAX_ATTEMPTS in all) unless `permanent` (it can never succeed).
- `mark_covered(request, listed) -> ids`: the gaps inside a finished backfill become filled. The
  exchange's listed symbols are an argument: the store never asks the network, least of all
  while it holds row locks.
- Inside detection's transaction (a cursor passed in): `reopen_due`, `existing`, `record`.

Every function that is not given a cursor runs in its own transaction (`common.db.cursor`).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from backfill.intervals import Finding, subtract_intervals
from backfill.markets import gap_symbols
from backfill.validation import BackfillRequest
from common.db import cursor
from common.topics import EXCHANGES

UTC = timezone.utc
log = logging.getLogger("backfill.gap_store")
STATUSES = ("open", "backfilling", "filled", "failed")
TRANSITIONS = {
    "open": {"backfilling", "filled", "failed"},
    "backfilling": {"filled", "failed", "open"},
    "failed": {"open", "backfilling", "filled"},
    "filled": set(),
}
RETRY_FIRST = timedelta(minutes=5)
RETRY_CAP = timedelta(hours=2)
MAX_ATTEMPTS = 8
COLUMNS = "id, exchange, symbol, gap_start, gap_end, status, kind, detected_at, filled_at, rows_filled, error"


@dataclass
class Gap:
    id: int
    exchange: str
    symbol: str | None          # None: exchange-wide (every listed symbol, see gap_symbols)
    gap_start: datetime
    gap_end: datetime           # exclusive
    status: str
    kind: str | None
    detected_at: datetime | None = None
    filled_at: datetime | None = None
    rows_filled: int | None = None
    error: str | None = None

    @property
    def minutes(self) -> int:
        return int((self.gap_end - self.gap_start).total_seconds() // 60)

    def to_dict(self) -> dict:
        iso = lambda t: t.isoformat() if t else None  # noqa: E731
        return {"id": self.id, "exchange": self.exchange, "symbol": self.symbol,
                "gap_start": iso(self.gap_start), "gap_end": iso(self.gap_end), "status": self.status,
                "kind": self.kind, "detected_at": iso(self.detected_at), "filled_at": iso(self.filled_at),
                "rows_filled": self.rows_filled, "error": self.error}


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown gap status {status!r:.40}; choose one of {', '.join(STATUSES)}")


# -- reading --------------------------------------------------------------------------------

def list_gaps(status: str | None = None, exchange: str | None = None, limit: int = 100) -> list[Gap]:
    """Gaps, newest first."""
    if status is not None:
        _check_status(status)
    if exchange is not None and exchange not in EXCHANGES:
        raise ValueError(f"unknown exchange {exchange!r:.40}; choose one of {', '.join(EXCHANGES)}")
    with cursor() as cur:
        cur.execute(f"SELECT {COLUMNS} FROM gaps WHERE (%(st)s::text IS NULL OR status = %(st)s) "
                    f"AND (%(ex)s::text IS NULL OR exchange = %(ex)s) ORDER BY gap_start DESC, id DESC "
                    f"LIMIT %(lim)s", {"st": status, "ex": exchange, "lim": int(limit)})
        return [Gap(*row) for row in cur.fetchall()]


def open_gaps(exchange: str | None = None, limit: int = 100) -> list[Gap]:
    """Open gaps, oldest first."""
    return sorted(list_gaps("open", exchange, limit), key=lambda g: (g.gap_start, g.id))


def get_gap(gap_id: int) -> Gap:
    with cursor() as cur:
        cur.execute(f"SELECT {COLUMNS} FROM gaps WHERE id = %s", (int(gap_id),))
        row = cur.fetchone()
    if row is None:
        raise LookupError(f"no gap with id {gap_id}")
    return Gap(*row)


# -- transitions ----------------------------------------------------------------------------

def claim(gap_id: int) -> bool:
    """open|failed -> backfilling, atomically; False if another worker has it or it is filled."""
    with cursor() as cur:
        cur.execute("UPDATE gaps SET status = 'backfilling', error = NULL WHERE id = %s "
                    "AND status IN ('open', 'failed') RETURNING id", (int(gap_id),))
        return cur.fetchone() is not None


def mark(gap_id: int, status: str, *, rows_filled: int | None = None, error: str | None = None,
         permanent: bool = False) -> Gap:
    """Move a gap to `status` (validated against TRANSITIONS); returns the updated gap.

    A `failed` gap counts an attempt and is retried by `reopen_failed` after a backoff (5 min,
    doubling, at most 2 h, MAX_ATTEMPTS in all) unless `permanent` (it can never succeed)."""
    _check_status(status)
    with cursor() as cur:
        cur.execute("SELECT status FROM gaps WHERE id = %s FOR UPDATE", (int(gap_id),))
        row = cur.fetchone()
        if row is None:
            raise LookupError(f"no gap with id {gap_id}")
        if status != row[0] and status not in TRANSITIONS[row[0]]:
            raise ValueError(f"gap {gap_id} is {row[0]}; it cannot become {status}")
        cur.execute(f"""UPDATE gaps SET status = %(st)s,
                            filled_at = CASE WHEN %(st)s = 'filled' THEN now() ELSE filled_at END,
                            rows_filled = coalesce(%(rows)s, rows_filled),
                            error = CASE WHEN %(st)s = 'filled' THEN NULL ELSE coalesce(%(err)s, error) END,
                            attempts = attempts + CASE WHEN %(st)s = 'failed' THEN 1 ELSE 0 END,
                            permanent = CASE WHEN %(st)s = 'failed' THEN %(perm)s ELSE permanent END,
                            retry_after = CASE WHEN %(st)s = 'failed' THEN now() + least(
                                %(first)s * power(2, attempts), %(cap)s) ELSE retry_after END
                        WHERE id = %(id)s RETURNING {COLUMNS}""",
                    {"st": status, "rows": rows_filled, "err": error[:2000] if error else None,
                     "id": int(gap_id), "perm": bool(permanent), "first": RETRY_FIRST, "cap": RETRY_CAP})
        return Gap(*cur.fetchone())


def reopen_failed(now: datetime | None = None) -> list[int]:
    """failed -> open for the gaps whose retry time has come (not permanent, attempts left)."""
    with cursor() as cur:
        return reopen_due(cur, (now or datetime.now(UTC)).astimezone(UTC))


def reopen_due(cur, now: datetime) -> list[int]:
    cur.execute("""UPDATE gaps SET status = 'open' WHERE status = 'failed' AND NOT permanent
                   AND attempts < %s AND coalesce(retry_after, now()) <= %s RETURNING id""",
                (MAX_ATTEMPTS, now))
    return [r[0] for r in cur.fetchall()]


def mark_covered(request: BackfillRequest, listed: Iterable[str] | None) -> list[int]:
    """Mark filled the not-yet-filled gaps inside `request`, a backfill that finished without a
    failed or unsettled chunk; returns their ids.

    A per-symbol gap is covered when its symbol was backfilled; an exchange-wide gap when every
    symbol it is about (gap_symbols(listed): listed by the exchange, within SYMBOLS) was.
    `listed`: the exchange's symbols, read by the caller beforehand; None leaves the
    exchange-wide gaps as they are."""
    wanted = set(request.symbols)
    wide_covered = listed is not None and set(gap_symbols(listed)) <= wanted
    with cursor() as cur:
        cur.execute(f"SELECT {COLUMNS} FROM gaps WHERE exchange = %s AND status <> 'filled' "
                    f"AND gap_start >= %s AND gap_end <= %s ORDER BY id FOR UPDATE",
                    (request.exchange, request.start, request.end))
        inside = [Gap(*row) for row in cur.fetchall()]
        covered = [g.id for g in inside if (g.symbol in wanted if g.symbol is not None else wide_covered)]
        if listed is None and any(g.symbol is None for g in inside):
            log.info("%s: exchange-wide gaps inside %s .. %s left as they are: its listed symbols were not given",
                     request.exchange, request.start, request.end)
        if covered:
            # rows_filled: the exchange's candles now stored for the gap's minutes
            cur.execute("""UPDATE gaps g SET status = 'filled', filled_at = now(), error = NULL,
                                  rows_filled = (SELECT count(*) FROM candles_1m c WHERE c.exchange = g.exchange
                                                 AND c.source = 'rest' AND c.open_time >= g.gap_start
                                                 AND c.open_time < g.gap_end
                                                 AND (g.symbol IS NULL OR c.symbol = g.symbol))
                           WHERE g.id = ANY(%s)""", (covered,))
    return covered


# -- inside detection's transaction -----------------------------------------------------------

def existing(cur, exchange: str, lo: datetime, hi: datetime) -> list[Gap]:
    """The recorded gaps of `exchange` (any status) that touch [lo, hi]."""
    cur.execute(f"SELECT {COLUMNS} FROM gaps WHERE exchange = %s AND gap_end >= %s AND gap_start <= %s",
                (exchange, lo, hi))
    return [Gap(*row) for row in cur.fetchall()]


def record(cur, exchange: str, symbol: str | None, findings: list[Finding], existing: list[Gap]) -> list[Gap]:
    """Insert findings minus existing gaps; extend an open gap a finding touches. Returns the gaps
    created or extended; `existing` is kept up to date for the next call."""
    mine = [g for g in existing if g.symbol == symbol]
    covered = [(g.gap_start, g.gap_end) for g in existing if g.symbol is None or g.symbol == symbol]
    out = []
    for (s, e), kinds in findings:
        for ns, ne in subtract_intervals([(s, e)], covered):
            touching = [g for g in mine if g.status == "open" and g.gap_start <= ne and g.gap_end >= ns]
            if touching:
                g = touching[0]
                kind = ",".join(sorted(set((g.kind or "").split(",")) - {""} | kinds))
                cur.execute(f"UPDATE gaps SET gap_start = least(gap_start, %s), gap_end = greatest(gap_end, %s), "
                            f"kind = %s WHERE id = %s RETURNING {COLUMNS}", (ns, ne, kind, g.id))
            else:
                cur.execute(f"INSERT INTO gaps (exchange, symbol, gap_start, gap_end, status, kind) "
                            f"VALUES (%s, %s, %s, %s, 'open', %s) RETURNING {COLUMNS}",
                            (exchange, symbol, ns, ne, ",".join(sorted(kinds))))
            gap = Gap(*cur.fetchone())
            mine = [x for x in mine if x.id != gap.id] + [gap]
            existing[:] = [x for x in existing if x.id != gap.id] + [gap]
            covered.append((gap.gap_start, gap.gap_end))
            out = [x for x in out if x.id != gap.id] + [gap]
    return out
