"""Gap detection: the queries that find missing or doubtful minutes, recorded in the gap store.

`detect_gaps(now=None, *, lookback=6 h, settle=60 s, stale_after=30 s, exchanges=None,
listed=None) -> list[Gap]` looks at the horizon [now - lookback, now - settle) per exchange
(`intervals.detection_horizon`, whole minutes: the loader may still be writing the newest ticks).
The horizon is always the whole lookback window, whenever the stream began: the time before an
exchange's first session is time no session covered, so the minutes before the stream began and
the partly seen minute the first session began in are found like any other uncovered time, by
whichever run sees them first (a run before the first session and the runs after it leave no
minute between their horizons). It finds:

(a) `uncovered`: time no websocket session covered (`intervals.uncovered_minutes`). A session
    covers [coalesce(subscribed_at, connected_at), least(disconnected_at or last_seen_at,
    covered_until)): `covered_until` is reported by the extractor (the newest receive time up to
    which everything read is in Kafka or its spool, minus the exchange's push interval and a
    latency allowance), so a session ends where its extractor's data ends, not where it noticed
    the socket was gone; an open session whose last heartbeat (last_seen_at) is younger than
    `stale_after` covers up to now. When an extractor shards its symbols over several
    connections, each session records its shard's symbols (`stream_sessions.symbols`), and a
    symbol is covered only by the sessions of its shard (or by an unsharded session): a shard
    that is down while the others stream leaves per-symbol `uncovered` gaps for its symbols
    (`intervals.scoped_uncovered`). A symbol's horizon is the whole window when it is in SYMBOLS
    (it should always be streamed), else the span of its shard's sessions (a symbol dropped from
    the configuration is not a gap).
(b) `silence`: whole minutes inside covered time with no tick of the exchange at all (a session
    that claims to be up but delivers nothing).
(d) `dlq`: minutes whose data went to a dead-letter topic instead of `ticks` (`dlq_records`,
    written by the loader): for the symbols the dead letter names, exchange-wide when it names
    none; from DEAD_LETTER_SLACK before its receive time to the end of that minute.
(c) `missing_candles`: for each tracked symbol, minutes of the horizon with no `candles_1m`
    row. Islands closer than MERGE_TOLERANCE are merged.
    Tracked symbols = symbols with candles on that exchange within the window (`tracked_symbols`)
    and every market the exchange lists in `listed` (the DAG and the CLI pass
    `backfill.markets.listed_markets()`, read before detection starts: detection itself does no
    network work); restricted to the SYMBOLS setting when it is set.

Edges: a gap spans whole minutes; a minute only partly seen by the stream belongs to the gap
(uncovered intervals are widened to whole minutes, the minute the first session began in
included; a silence is widened by one minute on each side), because its stream candle is
incomplete and must be replaced by the REST one. Reconciliation (backfill.reconcile) replaces
every stream candle after its minute settled anyway; these edges keep the stored history right
when it is off (RECONCILE=off).

Recording (backfill.gap_store.record): (a), (b) and exchange-wide (d) merge into exchange-wide
gaps (`symbol` NULL, `kind` e.g. 'silence,uncovered'); (c) gives per-symbol gaps minus the
exchange-wide ones. Time already in a recorded gap of any status (exchange-wide gaps count for
every symbol) is not recorded again; a finding that touches an `open` gap extends it. So
detecting again never duplicates a gap, and a filled gap is not found again. Detection runs in
one transaction under an advisory lock (one detector at a time), and first reopens the failed
gaps whose retry time has come.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from backfill import gap_store
from backfill.gap_store import Gap
from backfill.intervals import (MINUTE, Finding, Interval, clip, detection_horizon, label_spans, merge_findings,
                                merge_intervals, minutes_to_intervals, scoped_uncovered, silences,
                                subtract_intervals, uncovered_minutes)
from backfill.markets import gap_symbols
from backfill.validation import floor_minute
from common.db import cursor
from common.topics import EXCHANGES

UTC = timezone.utc
log = logging.getLogger("backfill.detect")
MERGE_TOLERANCE = timedelta(minutes=3)
# an open session whose last heartbeat (every 5 s) is older than this is taken as dead
STALE_AFTER = timedelta(seconds=30)
# A tick's exchange time precedes the moment our extractor read its frame by at most the exchange's
# push interval (Binance 1 s, KuCoin 0.1 s) plus network latency: the minutes a dead letter's data
# can belong to start this long before its receive time.
DEAD_LETTER_SLACK = timedelta(seconds=5)
_LOCK_ID = 727276


def detect_gaps(now: datetime | None = None, *, lookback: timedelta = timedelta(hours=6),
                settle: timedelta = timedelta(seconds=60), stale_after: timedelta = STALE_AFTER,
                exchanges: Iterable[str] | None = None,
                listed: dict[str, Iterable[str]] | None = None) -> list[Gap]:
    """Find and record gaps (see the module docstring); returns the gaps created or extended.

    listed: the markets each exchange lists (`backfill.markets.listed_markets()`, read before).
    Its symbols (within SYMBOLS) are tracked too, so a market that has not traded since the
    stream began still gets its minutes checked (and confirmed empty by the backfill) instead of
    staying untracked."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    lo, hi = detection_horizon(now, lookback, settle)
    changed: list[Gap] = []
    with cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        reopened = gap_store.reopen_due(cur, now)
        if reopened:
            log.info("retrying failed gaps %s", reopened)
        for exchange in (exchanges or EXCHANGES):
            changed += _detect_exchange(cur, exchange, lo, hi, now, stale_after, (listed or {}).get(exchange))
    return changed


def tracked_symbols(exchange: str, start: datetime, end: datetime) -> list[str]:
    """Symbols with candles on `exchange` in [start, end), restricted to SYMBOLS when set."""
    with cursor() as cur:
        return _tracked_symbols(cur, exchange, start, end)


def _detect_exchange(cur, exchange: str, lo: datetime, hi: datetime, now: datetime, stale_after: timedelta,
                     listed: Iterable[str] | None) -> list[Gap]:
    """Record the gaps of one exchange in [lo, hi): exchange-wide ones first, then per symbol
    minus the exchange-wide time."""
    wide, per_symbol = _stream_findings(cur, exchange, lo, hi, now, stale_after) if lo < hi else ([], {})
    dlq_wide, dlq_symbols = _dead_letter_findings(cur, exchange, lo, hi)
    wide = merge_findings(wide + [(span, {"dlq"}) for span in dlq_wide])
    for symbol, spans in dlq_symbols.items():
        per_symbol.setdefault(symbol, []).extend((span, {"dlq"}) for span in spans)
    known = gap_store.existing(cur, exchange, lo - timedelta(days=1), hi + timedelta(days=1))
    changed = gap_store.record(cur, exchange, None, wide, known)

    symbols = set(_tracked_symbols(cur, exchange, lo, hi)) | set(gap_symbols(listed or ()))
    wide_spans = [span for span, _ in wide]
    for symbol, minutes in _missing_candle_minutes(cur, exchange, sorted(symbols), lo, hi).items():
        spans = subtract_intervals(minutes_to_intervals(minutes, MERGE_TOLERANCE), wide_spans)
        per_symbol.setdefault(symbol, []).extend((span, {"missing_candles"}) for span in spans)
    for symbol in sorted(per_symbol):
        changed += gap_store.record(cur, exchange, symbol, merge_findings(per_symbol[symbol]), known)
    return changed


def _stream_findings(cur, exchange: str, lo: datetime, hi: datetime, now: datetime, stale_after: timedelta
                     ) -> tuple[list[Finding], dict[str, list[Finding]]]:
    """(a) and (b): exchange-wide uncovered and silent time, and per-symbol uncovered time of
    sharded sessions outside it."""
    from common.settings import get_settings

    coverage, sessions = _coverage(cur, exchange, lo, now, stale_after)
    uncovered = uncovered_minutes(lo, hi, coverage)
    covered = subtract_intervals([(lo, hi)], uncovered)
    silent = silences(_silent_minutes(cur, exchange, covered), lo, hi)
    wide = label_spans(uncovered, silent)
    spans = [span for span, _ in wide]
    per_symbol: dict[str, list[Finding]] = {}
    for symbol, gaps in scoped_uncovered(sessions, lo, hi, get_settings().symbols).items():
        found = [(span, {"uncovered"}) for span in subtract_intervals(gaps, spans)]
        if found:
            per_symbol[symbol] = found
    return wide, per_symbol


# -- queries (a cursor inside detection's transaction) ----------------------------------------

def _tracked_symbols(cur, exchange: str, start: datetime, end: datetime) -> list[str]:
    from common.settings import get_settings

    cur.execute("SELECT DISTINCT symbol FROM candles_1m WHERE exchange = %s "
                "AND open_time >= %s AND open_time < %s", (exchange, start, end))
    found = {r[0] for r in cur.fetchall()}
    configured = set(get_settings().symbols)
    return sorted(found & configured if configured else found)


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


def _silent_minutes(cur, exchange: str, covered: list[Interval]) -> list[datetime]:
    silent = []
    for s, e in covered:
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
