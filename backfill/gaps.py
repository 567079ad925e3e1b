"""Gap detection over Postgres and the life of a gap: open -> backfilling -> filled | failed.

Detection (`detect_gaps(now=None, *, lookback=6 h, settle=60 s, stale_after=30 s,
exchanges=None) -> list[Gap]`) looks at the horizon [now - lookback, now - settle) per exchange
(`detection_horizon`, whole minutes: the loader may still be writing the newest ticks). The
horizon is always the whole lookback window, whenever the stream began: the time before an
exchange's first session is time no session covered, so the minutes before the stream began and
the partly seen minute the first session began in are found like any other uncovered time, by
whichever run sees them first (a run before the first session and the runs after it leave no
minute between their horizons). It finds:

(a) `uncovered`: time no websocket session covered (`uncovered_minutes`). A session covers
    [coalesce(subscribed_at, connected_at), least(disconnected_at or last_seen_at, covered_until)):
    `covered_until` is reported by the extractor (the newest receive time up to which everything
    read is in Kafka or its spool, minus the exchange's push interval and a latency allowance), so
    a session ends where its extractor's data ends, not where it noticed the socket was gone; an
    open session whose last heartbeat (last_seen_at) is younger than `stale_after` covers up to now.
    When an extractor shards its symbols over several connections, each session records its
    shard's symbols (`stream_sessions.symbols`), and a symbol is covered only by the sessions of
    its shard (or by an unsharded session): a shard that is down while the others stream leaves
    per-symbol `uncovered` gaps for its symbols (`scoped_uncovered`). A symbol's horizon is the
    whole window when it is in SYMBOLS (it should always be streamed), else the span of its
    shard's sessions (a symbol dropped from the configuration is not a gap).
(b) `silence`: whole minutes inside covered time with no tick of the exchange at all (a session
    that claims to be up but delivers nothing).
(d) `dlq`: minutes whose data went to a dead-letter topic instead of `ticks` (`dlq_records`,
    written by the loader): for the symbols the dead letter names, exchange-wide when it names
    none; from DEAD_LETTER_SLACK before its receive time to the end of that minute.
(c) `missing_candles`: for each tracked symbol, minutes of the horizon with no `candles_1m`
    row. Islands closer than MERGE_TOLERANCE are merged.
    Tracked symbols = symbols with candles on that exchange within the window (`tracked_symbols`)
    and, when the caller passes `listed` (the DAG and the CLI do), every market the exchange
    lists; restricted to the SYMBOLS setting when it is set.

An exchange-wide gap is filled for every symbol the exchange lists (`gap_symbols`, within
SYMBOLS when set), not only the tracked ones: a market that did not trade around an outage
still gets its minutes (REST candles or confirmed-empty minutes).

Edges: a gap spans whole minutes; a minute only partly seen by the stream belongs to the gap
(uncovered intervals are widened to whole minutes, the minute the first session began in
included; a silence is widened by one minute on each side), because its stream candle is
incomplete and must be replaced by the REST one. Reconciliation (backfill.reconcile) replaces
every stream candle after its minute settled anyway; these edges keep the stored history right
when it is off (RECONCILE=off).

Recording: (a) and (b) merge into exchange-wide gaps (`symbol` NULL, `kind` e.g.
'silence,uncovered'); (c) gives per-symbol gaps minus the exchange-wide ones. Time already in a
recorded gap of any status (exchange-wide gaps count for every symbol) is not recorded again; a
finding that touches an `open` gap extends it. So detecting again never duplicates a gap, and a
filled gap is not found again. Detection runs under an advisory lock (one detector at a time).

Life: `claim(gap_id)` (open|failed -> backfilling, atomic), `mark(gap_id, status, rows_filled=,
error=)` (validated transitions), `fill_gap(gap)` (claim, backfill, mark filled/failed),
`mark_covered(request, summary)` (gaps inside a finished backfill become filled),
`open_gaps()`, `list_gaps()`, `request_for_gap(gap)`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from backfill.validation import BackfillRequest, ceil_minute, floor_minute, validate_request
from common.topics import EXCHANGES

UTC = timezone.utc
log = logging.getLogger("backfill.gaps")
MINUTE = timedelta(minutes=1)
MERGE_TOLERANCE = timedelta(minutes=3)
# an open session whose last heartbeat (every 5 s) is older than this is taken as dead
STALE_AFTER = timedelta(seconds=30)
STATUSES = ("open", "backfilling", "filled", "failed")
TRANSITIONS = {
    "open": {"backfilling", "filled", "failed"},
    "backfilling": {"filled", "failed", "open"},
    "failed": {"open", "backfilling", "filled"},
    "filled": set(),
}
_LOCK_ID = 727276
_COLUMNS = "id, exchange, symbol, gap_start, gap_end, status, kind, detected_at, filled_at, rows_filled, error"

Interval = tuple[datetime, datetime]


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


# -- interval arithmetic (pure) -------------------------------------------------------------

def merge_intervals(intervals: Iterable[Interval], tolerance: timedelta = timedelta(0)) -> list[Interval]:
    out: list[list[datetime]] = []
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if out and s <= out[-1][1] + tolerance:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def subtract_intervals(base: Iterable[Interval], minus: Iterable[Interval]) -> list[Interval]:
    minus = merge_intervals(minus)
    out = []
    for s, e in merge_intervals(base):
        cur = s
        for ms, me in minus:
            if me <= cur or ms >= e:
                continue
            if ms > cur:
                out.append((cur, ms))
            cur = max(cur, me)
            if cur >= e:
                break
        if cur < e:
            out.append((cur, e))
    return out


def merge_findings(findings: Iterable[tuple[Interval, set[str]]]) -> list[tuple[Interval, set[str]]]:
    """Overlapping or touching findings become one, with the union of their kinds."""
    out: list[tuple[list[datetime], set[str]]] = []
    for (s, e), kinds in sorted(findings, key=lambda f: f[0]):
        if out and s <= out[-1][0][1]:
            out[-1][0][1] = max(out[-1][0][1], e)
            out[-1][1].update(kinds)
        else:
            out.append(([s, e], set(kinds)))
    return [((s, e), kinds) for (s, e), kinds in out]


def widen_to_minutes(intervals: Iterable[Interval]) -> list[Interval]:
    return merge_intervals((floor_minute(s), ceil_minute(e)) for s, e in intervals)


def minutes_to_intervals(minutes: Iterable[datetime], tolerance: timedelta = timedelta(0)) -> list[Interval]:
    return merge_intervals(((m, m + MINUTE) for m in minutes), tolerance)


def clip(intervals: Iterable[Interval], lo: datetime, hi: datetime) -> list[Interval]:
    return [(max(s, lo), min(e, hi)) for s, e in intervals if min(e, hi) > max(s, lo)]


# -- queries --------------------------------------------------------------------------------

def _connect(conn):
    from common.db import connect
    return (conn, False) if conn is not None else (connect(), True)


def tracked_symbols(exchange: str, start: datetime, end: datetime, conn=None) -> list[str]:
    """Symbols with candles on `exchange` in [start, end), restricted to SYMBOLS when set."""
    from common.settings import get_settings
    conn, own = _connect(conn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT DISTINCT symbol FROM candles_1m WHERE exchange = %s "
                        "AND open_time >= %s AND open_time < %s", (exchange, start, end))
            found = {r[0] for r in cur.fetchall()}
    finally:
        if own:
            conn.close()
    configured = set(get_settings().symbols)
    return sorted(found & configured if configured else found)


def scoped_uncovered(sessions: list[tuple[datetime, datetime, list[str] | None]], lo: datetime, hi: datetime,
                     configured: Iterable[str] = ()) -> dict[str, list[Interval]]:
    """Per-symbol uncovered time in [lo, hi) left by sharded sessions (pure).

    sessions: (start, end, symbols) coverage of each session; symbols None = unsharded (covers
    every symbol). Only when some session in the window is sharded: each symbol of a shard, and
    each `configured` symbol, is covered by the unsharded sessions and the sessions whose
    symbols hold it. Horizon: [lo, hi) for a configured symbol, else from the first start to the
    last end of its sessions. Returned intervals are widened to whole minutes."""
    scoped = [(s, e, syms) for s, e, syms in sessions if syms is not None]
    if not scoped:
        return {}
    whole = [(s, e) for s, e, syms in sessions if syms is None]
    own: dict[str, list[Interval]] = {}
    for s, e, syms in scoped:
        for sym in syms:
            own.setdefault(sym, []).append((s, e))
    configured = set(configured)
    out: dict[str, list[Interval]] = {}
    for sym in sorted(set(own) | configured):
        mine = own.get(sym, [])
        if sym in configured:
            start, end = lo, hi
        else:
            start, end = max(lo, min(s for s, _ in mine)), min(hi, max(e for _, e in mine))
        if end <= start:
            continue
        gaps = clip(widen_to_minutes(subtract_intervals([(start, end)], whole + mine)), lo, hi)
        if gaps:
            out[sym] = gaps
    return out


def detection_horizon(now: datetime, lookback: timedelta, settle: timedelta) -> Interval:
    """[lo, hi) in whole minutes: from the minute `lookback` before now to the start of the minute
    `settle` before now. It does not depend on when the stream began, so two runs less than
    lookback - settle apart see overlapping horizons and no minute falls between them."""
    return floor_minute(now - lookback), floor_minute(now - settle)


def uncovered_minutes(lo: datetime, hi: datetime, coverage: Iterable[Interval]) -> list[Interval]:
    """The whole minutes of [lo, hi) that the sessions' `coverage` does not fully cover (pure):
    time before the first session, between sessions and after the last, each partly covered
    minute at their edges included."""
    return clip(widen_to_minutes(subtract_intervals([(lo, hi)], coverage)), lo, hi)


def _coverage(cur, exchange: str, lo: datetime, now: datetime, stale_after: timedelta):
    """(coverage intervals overlapping [lo, now), the same per session with its symbols:
    [(start, end, symbols | None)])."""
    # a session covers up to what its extractor read and made safe (covered_until, see
    # streaming/extractor/transport.py), not to when it noticed the socket was gone; a live one
    # (fresh heartbeat) covers up to now
    cur.execute("""
        SELECT coalesce(subscribed_at, connected_at),
               CASE WHEN disconnected_at IS NOT NULL THEN least(disconnected_at, covered_until)
                    WHEN last_seen_at >= %(fresh)s THEN %(now)s
                    ELSE least(last_seen_at, covered_until) END,
               symbols
        FROM stream_sessions
        WHERE exchange = %(ex)s AND coalesce(subscribed_at, connected_at) < %(now)s
          AND (disconnected_at IS NULL OR disconnected_at > %(lo)s)
          AND (disconnected_at IS NOT NULL OR last_seen_at > %(lo)s OR last_seen_at >= %(fresh)s)""",
                {"ex": exchange, "lo": lo, "now": now, "fresh": now - stale_after})
    sessions = [(s, e, syms) for s, e, syms in cur.fetchall() if e > s]
    # a session of a shard that carries no ticker (syms == []) covers no symbol
    return merge_intervals((s, e) for s, e, syms in sessions if syms != []), sessions


# A tick's exchange time precedes the moment our extractor read its frame by at most the exchange's
# push interval (Binance 1 s, KuCoin 0.1 s) plus network latency: the minutes a dead letter's data
# can belong to start this long before its receive time.
DEAD_LETTER_SLACK = timedelta(seconds=5)


def _dead_letter_findings(cur, exchange: str, lo: datetime, hi: datetime
                          ) -> tuple[list[Interval], dict[str, list[Interval]]]:
    """The minutes of [lo, hi) whose data went to the DLQ instead of `ticks` (dlq_records):
    exchange-wide where the dead letter could not name its symbols, else per symbol. Dead
    letters of markets we do not track (untracked) leave no gap."""
    cur.execute("""SELECT received_at, symbols FROM dlq_records
                   WHERE exchange = %s AND NOT untracked AND received_at >= %s AND received_at < %s""",
                (exchange, lo, hi + DEAD_LETTER_SLACK))
    wide: list[Interval] = []
    per_symbol: dict[str, list[Interval]] = {}
    for received_at, symbols in cur.fetchall():
        span = (floor_minute(received_at - DEAD_LETTER_SLACK), floor_minute(received_at) + MINUTE)
        if symbols:
            for symbol in symbols:
                per_symbol.setdefault(symbol, []).append(span)
        else:
            wide.append(span)
    return (clip(merge_intervals(wide), lo, hi),
            {sym: clip(merge_intervals(spans), lo, hi) for sym, spans in per_symbol.items()})


def _silent_minutes(cur, exchange: str, covered_minutes: list[Interval]) -> list[datetime]:
    silent = []
    for s, e in covered_minutes:
        cur.execute("""
            SELECT m FROM generate_series(%(s)s::timestamptz, %(e)s::timestamptz - interval '1 minute',
                                          interval '1 minute') AS m
            WHERE NOT EXISTS (SELECT 1 FROM ticks t WHERE t.exchange = %(ex)s
                              AND t.event_time >= m AND t.event_time < m + interval '1 minute')""",
                    {"s": s, "e": e, "ex": exchange})
        silent.extend(r[0] for r in cur.fetchall())
    return silent


def _missing_candle_minutes(cur, exchange: str, symbols: list[str], lo: datetime, hi: datetime
                            ) -> dict[str, list[datetime]]:
    if not symbols:
        return {}
    cur.execute("""
        SELECT s.symbol, m
        FROM unnest(%(symbols)s::text[]) AS s(symbol)
        CROSS JOIN generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz - interval '1 minute',
                                   interval '1 minute') AS m
        WHERE NOT EXISTS (SELECT 1 FROM candles_1m c
                          WHERE c.exchange = %(ex)s AND c.symbol = s.symbol AND c.open_time = m)
        ORDER BY 1, 2""", {"ex": exchange, "symbols": list(symbols), "lo": lo, "hi": hi})
    out: dict[str, list[datetime]] = {}
    for symbol, minute in cur.fetchall():
        out.setdefault(symbol, []).append(minute)
    return out


def _existing(cur, exchange: str, lo: datetime, hi: datetime) -> list[Gap]:
    cur.execute(f"SELECT {_COLUMNS} FROM gaps WHERE exchange = %s AND gap_end >= %s AND gap_start <= %s",
                (exchange, lo, hi))
    return [Gap(*row) for row in cur.fetchall()]


def _record(cur, exchange: str, symbol: str | None, findings: list[tuple[Interval, set[str]]],
            existing: list[Gap]) -> list[Gap]:
    """Insert findings minus existing gaps; extend an open gap a finding touches."""
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
                            f"kind = %s WHERE id = %s RETURNING {_COLUMNS}", (ns, ne, kind, g.id))
            else:
                cur.execute(f"INSERT INTO gaps (exchange, symbol, gap_start, gap_end, status, kind) "
                            f"VALUES (%s, %s, %s, %s, 'open', %s) RETURNING {_COLUMNS}",
                            (exchange, symbol, ns, ne, ",".join(sorted(kinds))))
            gap = Gap(*cur.fetchone())
            mine = [x for x in mine if x.id != gap.id] + [gap]
            existing[:] = [x for x in existing if x.id != gap.id] + [gap]
            covered.append((gap.gap_start, gap.gap_end))
            out = [x for x in out if x.id != gap.id] + [gap]
    return out


def detect_gaps(now: datetime | None = None, *, lookback: timedelta = timedelta(hours=6),
                settle: timedelta = timedelta(seconds=60), stale_after: timedelta = STALE_AFTER,
                exchanges: Iterable[str] | None = None, listed: dict[str, Iterable[str]] | None = None,
                conn=None) -> list[Gap]:
    """Find and record gaps (see the module docstring); returns the gaps created or extended.

    listed: the markets each exchange lists (`listed_markets()`, read before: detection itself
    does no network work). Its symbols (within SYMBOLS) are tracked too, so a market that has not
    traded since the stream began still gets its minutes checked (and confirmed empty by the
    backfill) instead of staying untracked."""
    from common.settings import get_settings
    now = (now or datetime.now(UTC)).astimezone(UTC)
    lo, hi = detection_horizon(now, lookback, settle)
    conn, own = _connect(conn)
    changed: list[Gap] = []
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            reopened = _reopen_failed(cur, now)
            if reopened:
                log.info("retrying failed gaps %s", reopened)
            for exchange in (exchanges or EXCHANGES):
                coverage, sessions = _coverage(cur, exchange, lo, now, stale_after)
                wide: list[tuple[Interval, set[str]]] = []
                per_symbol: dict[str, list[tuple[Interval, set[str]]]] = {}
                if lo < hi:
                    uncovered = uncovered_minutes(lo, hi, coverage)
                    covered_minutes = subtract_intervals([(lo, hi)], uncovered)
                    silent = _silent_minutes(cur, exchange, covered_minutes)
                    silences = clip(merge_intervals((s - MINUTE, e + MINUTE)
                                                    for s, e in minutes_to_intervals(silent)), lo, hi)
                    spans = merge_intervals(uncovered + silences)
                    configured = get_settings().symbols
                    for symbol, gaps in scoped_uncovered(sessions, lo, hi, configured).items():
                        for span in subtract_intervals(gaps, spans):
                            per_symbol.setdefault(symbol, []).append((span, {"uncovered"}))
                    for s, e in spans:
                        kinds = set()
                        if any(us < e and ue > s for us, ue in uncovered):
                            kinds.add("uncovered")
                        if any(ss < e and se > s for ss, se in silences):
                            kinds.add("silence")
                        wide.append(((s, e), kinds))
                dlq_wide, dlq_symbols = _dead_letter_findings(cur, exchange, lo, hi)
                wide = merge_findings(wide + [(span, {"dlq"}) for span in dlq_wide])
                for symbol, spans in dlq_symbols.items():
                    per_symbol.setdefault(symbol, []).extend((span, {"dlq"}) for span in spans)
                existing = _existing(cur, exchange, lo - timedelta(days=1), hi + timedelta(days=1))
                changed += _record(cur, exchange, None, wide, existing)

                symbols = tracked_symbols(exchange, lo, hi, conn=conn)
                if listed and listed.get(exchange):
                    symbols = sorted(set(symbols) | set(gap_symbols(listed[exchange])))
                wide_spans = [(s, e) for (s, e), _ in wide]
                for symbol, minutes in _missing_candle_minutes(cur, exchange, symbols, lo, hi).items():
                    spans = subtract_intervals(minutes_to_intervals(minutes, MERGE_TOLERANCE), wide_spans)
                    per_symbol.setdefault(symbol, []).extend((span, {"missing_candles"}) for span in spans)
                for symbol in sorted(per_symbol):
                    changed += _record(cur, exchange, symbol, merge_findings(per_symbol[symbol]), existing)
    finally:
        if own:
            conn.close()
    return changed


# -- the life of a gap ----------------------------------------------------------------------

def list_gaps(status: str | None = None, exchange: str | None = None, limit: int = 100, conn=None) -> list[Gap]:
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown gap status {status!r:.40}; choose one of {', '.join(STATUSES)}")
    if exchange is not None and exchange not in EXCHANGES:
        raise ValueError(f"unknown exchange {exchange!r:.40}; choose one of {', '.join(EXCHANGES)}")
    conn, own = _connect(conn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM gaps WHERE (%(st)s::text IS NULL OR status = %(st)s) "
                        f"AND (%(ex)s::text IS NULL OR exchange = %(ex)s) ORDER BY gap_start DESC, id DESC "
                        f"LIMIT %(lim)s", {"st": status, "ex": exchange, "lim": int(limit)})
            return [Gap(*row) for row in cur.fetchall()]
    finally:
        if own:
            conn.close()


def open_gaps(exchange: str | None = None, limit: int = 100, conn=None) -> list[Gap]:
    """Open gaps, oldest first."""
    return sorted(list_gaps("open", exchange, limit, conn), key=lambda g: (g.gap_start, g.id))


def get_gap(gap_id: int, conn=None) -> Gap:
    conn, own = _connect(conn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM gaps WHERE id = %s", (int(gap_id),))
            row = cur.fetchone()
    finally:
        if own:
            conn.close()
    if row is None:
        raise LookupError(f"no gap with id {gap_id}")
    return Gap(*row)


RETRY_FIRST = timedelta(minutes=5)
RETRY_CAP = timedelta(hours=2)
MAX_ATTEMPTS = 8


def mark(gap_id: int, status: str, *, rows_filled: int | None = None, error: str | None = None,
         permanent: bool = False, conn=None) -> Gap:
    """Move a gap to `status` (validated against TRANSITIONS); returns the updated gap.

    A `failed` gap counts an attempt and is retried by `reopen_failed` after a backoff (5 min,
    doubling, at most 2 h, MAX_ATTEMPTS in all) unless `permanent` (it can never succeed)."""
    if status not in STATUSES:
        raise ValueError(f"unknown gap status {status!r:.40}; choose one of {', '.join(STATUSES)}")
    conn, own = _connect(conn)
    try:
        with conn, conn.cursor() as cur:
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
                            WHERE id = %(id)s RETURNING {_COLUMNS}""",
                        {"st": status, "rows": rows_filled, "err": error[:2000] if error else None,
                         "id": int(gap_id), "perm": bool(permanent), "first": RETRY_FIRST, "cap": RETRY_CAP})
            return Gap(*cur.fetchone())
    finally:
        if own:
            conn.close()


def reopen_failed(now: datetime | None = None, conn=None) -> list[int]:
    """failed -> open for the gaps whose retry time has come (not permanent, attempts left)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    conn, own = _connect(conn)
    try:
        with conn, conn.cursor() as cur:
            return _reopen_failed(cur, now)
    finally:
        if own:
            conn.close()


def _reopen_failed(cur, now: datetime) -> list[int]:
    cur.execute("""UPDATE gaps SET status = 'open' WHERE status = 'failed' AND NOT permanent
                   AND attempts < %s AND coalesce(retry_after, now()) <= %s RETURNING id""",
                (MAX_ATTEMPTS, now))
    return [r[0] for r in cur.fetchall()]


def claim(gap_id: int, conn=None) -> bool:
    """open|failed -> backfilling, atomically; False if another worker has it or it is filled."""
    conn, own = _connect(conn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE gaps SET status = 'backfilling', error = NULL WHERE id = %s "
                        "AND status IN ('open', 'failed') RETURNING id", (int(gap_id),))
            return cur.fetchone() is not None
    finally:
        if own:
            conn.close()


def listed_markets(exchanges: Iterable[str] | None = None, purpose: str = "backfill") -> dict[str, set[str]]:
    """Every active spot market of each exchange (backfill.rest.known_symbols, cached); an
    exchange that cannot be reached now is left out with a warning (detection then tracks its
    symbols by their candles alone)."""
    from backfill.rest import known_symbols

    out: dict[str, set[str]] = {}
    for exchange in exchanges or EXCHANGES:
        try:
            out[exchange] = known_symbols(exchange, purpose)
        except Exception as e:  # noqa: BLE001 - reported; detection goes on without it
            log.warning("%s markets unavailable (%s: %s); tracking its symbols by their candles only",
                        exchange, type(e).__name__, str(e)[:200])
    return out


def gap_symbols(listed: Iterable[str]) -> list[str]:
    """The symbols an exchange-wide gap is about: every active spot market the exchange lists,
    restricted to the SYMBOLS setting when it is set. Not only the symbols seen around the gap:
    an illiquid market that did not trade in the hour before an outage still needs its minutes
    (a REST candle, or a confirmed-empty minute)."""
    from common.settings import get_settings

    configured = set(get_settings().symbols)
    return sorted(set(listed) & configured if configured else set(listed))


def request_for_gap(gap: Gap, *, now: datetime | None = None, known_symbols=None) -> BackfillRequest:
    """The backfill that fills `gap`: its symbol, or every symbol the exchange lists (gap_symbols)."""
    if gap.symbol is not None:
        symbols = [gap.symbol]
    else:
        if known_symbols is None:
            from backfill.rest import known_symbols as fetch_known
            known_symbols = fetch_known(gap.exchange)
        symbols = gap_symbols(known_symbols)
        if not symbols:
            raise ValueError(f"gap {gap.id}: {gap.exchange} lists no symbol to fill "
                             f"{gap.gap_start:%Y-%m-%d %H:%M} with (SYMBOLS setting and active markets)")
    return validate_request(gap.exchange, symbols, gap.gap_start, gap.gap_end, now=now,
                            known_symbols=known_symbols if known_symbols is not None else None,
                            max_window=max(gap.gap_end - gap.gap_start, timedelta(minutes=1)))


def mark_covered(request: BackfillRequest, summary=None, conn=None, listed=None) -> list[int]:
    """Mark filled the not-yet-filled gaps inside a backfill that finished without failure.

    A per-symbol gap is covered when its symbol was backfilled; an exchange-wide gap when every
    symbol it is about (gap_symbols: listed by the exchange now, within SYMBOLS) was. Returns the
    ids marked filled (none if `summary` failed). `listed`: the exchange's symbols (read from
    its markets when not given; an unreachable exchange raises, and the gaps stay as they are).
    """
    if summary is not None and not summary.ok:
        return []
    wanted = set(request.symbols)
    inside = ("FROM gaps WHERE exchange = %s AND status <> 'filled' AND gap_start >= %s AND gap_end <= %s",
              (request.exchange, request.start, request.end))
    conn, own = _connect(conn)
    done = []
    try:
        if listed is None:
            # the exchange's markets are read before the gaps are locked, and only when needed
            with conn, conn.cursor() as cur:
                cur.execute(f"SELECT EXISTS (SELECT 1 {inside[0]} AND symbol IS NULL)", inside[1])
                if cur.fetchone()[0]:
                    from backfill.rest import known_symbols
                    listed = known_symbols(request.exchange)
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT {_COLUMNS} {inside[0]} FOR UPDATE", inside[1])
            for gap in [Gap(*row) for row in cur.fetchall()]:
                if gap.symbol is not None:
                    ok = gap.symbol in wanted
                else:
                    ok = listed is not None and set(gap_symbols(listed)) <= wanted
                if ok:
                    cur.execute("""SELECT coalesce(sum(1), 0) FROM candles_1m WHERE exchange = %s
                                   AND source = 'rest' AND open_time >= %s AND open_time < %s
                                   AND (%s::text IS NULL OR symbol = %s)""",
                                (gap.exchange, gap.gap_start, gap.gap_end, gap.symbol, gap.symbol))
                    rows = cur.fetchone()[0]
                    cur.execute("UPDATE gaps SET status = 'filled', filled_at = now(), rows_filled = %s, "
                                "error = NULL WHERE id = %s", (rows, gap.id))
                    done.append(gap.id)
    finally:
        if own:
            conn.close()
    return done


def fill_gap(gap: "Gap | int", *, workers: int = 4, progress=None, now: datetime | None = None,
             known_symbols=None):
    """Claim `gap`, backfill it, mark it filled or failed; returns the engine Summary (None if not claimed)."""
    from backfill.engine import run_backfill

    gap = get_gap(gap) if isinstance(gap, int) else gap
    if not claim(gap.id):
        return None
    try:
        request = request_for_gap(gap, now=now, known_symbols=known_symbols)
        summary = run_backfill(request, progress, workers=workers)
    except ValueError as e:  # validation: this request can never succeed
        mark(gap.id, "failed", error=f"{type(e).__name__}: {str(e)[:500]}", permanent=True)
        raise
    except Exception as e:  # markets, database, S3: the gap records why and is retried later
        mark(gap.id, "failed", error=f"{type(e).__name__}: {str(e)[:500]}")
        raise
    if summary.ok and summary.chunks_partial == 0:
        mark_covered(request, summary)
        mark(gap.id, "filled")
    else:
        reason = "; ".join(f"{f['symbol']} {f['start']}: {f['error']}" for f in summary.failures[:3]) \
            or f"{summary.chunks_partial} chunk(s) not settled yet"
        mark(gap.id, "failed", rows_filled=summary.rows_written, error=reason)
    return summary
