"""Reconciliation: every closed minute ends up stored as the exchange's own 1-minute candle.

A candle the loader builds from tickers is provisional: tickers sample the trades, so its open,
high, low and close can miss the trades between two pushes, and it has no volume. For every
minute closed at least RECONCILE_SETTLE_SECONDS (120) ago and not reconciled yet, a run fetches
the exchange's candles of every listed symbol (within SYMBOLS: `markets.gap_symbols`) through the
one backfill service (`backfill.fill.fill(purpose="reconcile")`: its chunks, its S3 keeping of
the REST responses, its rate limits with reconciliation's 25 % share of the exchange's weight),
which stores them with `source = 'rest'` (a minute without a trade: confirmed empty, and it stays
so), adds to `candle_checks` how far each replaced stream candle was (backfill.checks) and fills
the gaps inside the window (with the listed symbols read before); then
`reconcile_state.reconciled_until` advances.

Where a run starts (`plan_window`, pure): at `reconciled_until`. An exchange's first run starts
at the minute of its first stream session (that partly seen minute included; gap detection fills
the minutes before the stream began with REST candles, so they need no reconciling), but never
earlier than RECONCILE_LOOKBACK_HOURS (6) before now. An exchange that never streamed has
nothing to reconcile. Each run reconciles at most RECONCILE_MAX_MINUTES (360) per exchange; the
rest waits for the next run (one request per symbol covers up to 1,000 (Binance) or 1,500
(KuCoin) minutes, so catching up costs about what one run costs).

Resumable: the state advances only when every chunk of the window is done; after a failure the
next run plans the same window and the engine skips the chunks already done (backfill_chunks).
One run per exchange at a time (a session advisory lock; another run waits `wait_s`, then says
`busy`). RECONCILE=off: nothing is fetched (status `off`).

- `reconcile_exchange(exchange, *, now=None, listed=None, ...) -> ReconcileResult`
- `run_reconcile(now=None, *, exchanges=None, ...) -> list[ReconcileResult]`
- `read_state(exchange) -> dict | None`
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from backfill.metrics import count_handled
from backfill.validation import floor_minute
from common.db import connect, cursor
from common.topics import EXCHANGES

UTC = timezone.utc
log = logging.getLogger("backfill.reconcile")
_LOCK_ID = 727277
# statuses: the run did what it should (OK) or left minutes for a later run
OK = ("done", "up_to_date", "never_streamed", "off", "busy")


@dataclass
class ReconcileResult:
    exchange: str
    status: str            # done | up_to_date | never_streamed | off | busy | incomplete | failed
    start: datetime | None = None
    end: datetime | None = None
    reconciled_until: datetime | None = None
    symbols: int = 0
    summary: dict = field(default_factory=dict)     # the engine's Summary (to_dict), when it ran
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in OK

    def to_dict(self) -> dict:
        iso = lambda t: t.isoformat() if t else None  # noqa: E731
        return {"exchange": self.exchange, "status": self.status, "ok": self.ok, "start": iso(self.start),
                "end": iso(self.end), "reconciled_until": iso(self.reconciled_until), "symbols": self.symbols,
                "summary": self.summary, "message": self.message}


def plan_window(now: datetime, *, reconciled_until: datetime | None, first_session: datetime | None,
                settle: timedelta, lookback: timedelta, max_minutes: int) -> tuple[datetime, datetime] | None:
    """The minutes [start, end) one run reconciles, or None when there is none (pure).

    end: at most `max_minutes` after start, and no minute that closed less than `settle` ago.
    start: `reconciled_until`; without one, the minute `first_session` began in, but not before
    now - lookback (no session at all: nothing to reconcile)."""
    if reconciled_until is not None:
        start = reconciled_until
    elif first_session is not None:
        start = max(floor_minute(first_session), floor_minute(now - lookback))
    else:
        return None
    end = min(floor_minute(now - settle), start + timedelta(minutes=max_minutes))
    return (start, end) if end > start else None


# -- state ----------------------------------------------------------------------------------

def read_state(exchange: str) -> dict | None:
    """{"reconciled_until", "started_at", "updated_at", "last_run"} of `exchange`, or None."""
    with cursor() as cur:
        cur.execute("SELECT reconciled_until, started_at, updated_at, last_run FROM reconcile_state "
                    "WHERE exchange = %s", (exchange,))
        row = cur.fetchone()
    return None if row is None else dict(zip(("reconciled_until", "started_at", "updated_at", "last_run"), row))


def _first_session(cur, exchange: str) -> datetime | None:
    cur.execute("SELECT min(connected_at) FROM stream_sessions WHERE exchange = %s", (exchange,))
    return cur.fetchone()[0]


def _advance(cur, exchange: str, start: datetime, end: datetime, last_run: dict) -> datetime:
    from psycopg2.extras import Json

    cur.execute("""
        INSERT INTO reconcile_state AS r (exchange, reconciled_until, started_at, updated_at, last_run)
        VALUES (%s, %s, %s, now(), %s)
        ON CONFLICT (exchange) DO UPDATE SET
            reconciled_until = greatest(r.reconciled_until, EXCLUDED.reconciled_until),
            updated_at = now(), last_run = EXCLUDED.last_run
        RETURNING reconciled_until""", (exchange, end, start, Json(last_run)))
    return cur.fetchone()[0]


def _lock(conn, exchange: str, wait_s: float, sleep=time.sleep) -> bool:
    """Hold the exchange's reconciliation lock on `conn` (session level: released when the
    connection closes, whatever happens); waits at most wait_s for another run to finish."""
    deadline = time.monotonic() + wait_s
    while True:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_ID, EXCHANGES.index(exchange)))
            if cur.fetchone()[0]:
                return True
        if time.monotonic() >= deadline:
            return False
        sleep(min(2.0, max(0.05, deadline - time.monotonic())))


# -- a run ----------------------------------------------------------------------------------

def reconcile_exchange(exchange: str, *, now: datetime | None = None, listed: Iterable[str] | None = None,
                       settle: timedelta | None = None, lookback: timedelta | None = None,
                       max_minutes: int | None = None, workers: int = 4, wait_s: float = 60.0,
                       on_plan: Callable | None = None, on_chunk: Callable | None = None) -> ReconcileResult:
    """Reconcile the next window of `exchange` (see the module docstring).

    listed: the exchange's active spot markets (read with reconciliation's budget when None).
    settle / lookback / max_minutes: the RECONCILE_* settings when None. on_plan(exchange,
    request, chunks) is called once the window is planned, on_chunk(exchange, ChunkResult) after
    each chunk (the CLI's progress bar)."""
    from common.settings import get_settings

    s = get_settings()
    if exchange not in EXCHANGES:
        raise ValueError(f"unknown exchange {exchange!r:.40}; choose one of {', '.join(EXCHANGES)}")
    if not s.reconcile:
        return ReconcileResult(exchange, "off", message="reconciliation is off (RECONCILE=off)")
    settle = timedelta(seconds=s.reconcile_settle_seconds) if settle is None else settle
    lookback = timedelta(hours=s.reconcile_lookback_hours) if lookback is None else lookback
    max_minutes = s.reconcile_max_minutes if max_minutes is None else int(max_minutes)

    # a session-level lock on a connection of its own: released when it closes, whatever happens
    lock_conn = connect()
    lock_conn.autocommit = True
    try:
        if not _lock(lock_conn, exchange, wait_s):
            return ReconcileResult(exchange, "busy", message=f"another reconciliation of {exchange} is running")
        return _reconcile_locked(exchange, now, listed, settle, lookback, max_minutes, workers, on_plan, on_chunk)
    finally:
        lock_conn.close()


def _reconcile_locked(exchange, now, listed, settle, lookback, max_minutes, workers, on_plan, on_chunk):
    from backfill.engine import plan_chunks
    from backfill.fill import failure_reason, fill
    from backfill.markets import gap_symbols
    from backfill.validation import validate_request

    now = (now or datetime.now(UTC)).astimezone(UTC)
    state = read_state(exchange)
    with cursor() as cur:
        first = _first_session(cur, exchange)
    until = state["reconciled_until"] if state else None
    window = plan_window(now, reconciled_until=until, first_session=first, settle=settle, lookback=lookback,
                         max_minutes=max_minutes)
    if window is None:
        status = "up_to_date" if until is not None or first is not None else "never_streamed"
        return ReconcileResult(exchange, status, reconciled_until=until,
                               message="no closed minute to reconcile yet" if status == "up_to_date"
                               else f"{exchange} has never streamed: nothing to reconcile")
    start, end = window
    if listed is None:
        from backfill.rest import FetchError, known_symbols
        try:
            listed = known_symbols(exchange, "reconcile")
        except FetchError as e:
            count_handled("reconcile.markets", e)
            log.warning("%s markets unavailable: %s; %s .. %s left for the next run", exchange, e, start, end)
            return ReconcileResult(exchange, "failed", start, end, until,
                                   message=f"{exchange} markets unavailable: {e}")
    symbols = gap_symbols(listed)
    result = ReconcileResult(exchange, "done", start, end, until, symbols=len(symbols))
    if symbols:
        request = validate_request(exchange, symbols, start, end, now=now, known_symbols=listed,
                                   max_window=end - start)
        chunks = plan_chunks(request)
        if on_plan is not None:
            on_plan(exchange, request, chunks)
        progress = (lambda r: on_chunk(exchange, r)) if on_chunk is not None else None
        done = fill(request, listed=listed, chunks=chunks, progress=progress, workers=workers, purpose="reconcile")
        result.summary = done.summary.to_dict()
        if not done.complete:
            result.status = "incomplete"
            result.message = (failure_reason(done.summary)
                              + " — the next run retries this window (chunks already done are skipped)")
            log.warning("%s %s .. %s not reconciled: %s", exchange, start, end, result.message)
            return result
    else:
        log.warning("%s lists none of the configured SYMBOLS: minutes %s .. %s have nothing to reconcile",
                    exchange, start, end)
    last_run = {"start": start.isoformat(), "end": end.isoformat(), "symbols": len(symbols),
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                **{k: result.summary.get(k, 0) for k in ("chunks_total", "requests", "rows_written",
                                                         "stream_compared", "stream_differing",
                                                         "stream_missing", "elapsed_s")}}
    with cursor() as cur:
        result.reconciled_until = _advance(cur, exchange, start, end, last_run)
    log.info("%s reconciled %s .. %s: %d symbols, %s", exchange, start, end, len(symbols), last_run)
    return result


def run_reconcile(now: datetime | None = None, *, exchanges: Iterable[str] | None = None,
                  listed: dict[str, Iterable[str]] | None = None, **kw) -> list[ReconcileResult]:
    """`reconcile_exchange` for each exchange (all by default), one after the other."""
    out = []
    for exchange in exchanges or EXCHANGES:
        mine = listed.get(exchange) if listed is not None else None
        try:
            out.append(reconcile_exchange(exchange, now=now, listed=mine, **kw))
        except Exception as e:  # a database or S3 error on one exchange: report it, do the other
            count_handled("reconcile.run", e)
            log.exception("reconciling %s failed", exchange)
            out.append(ReconcileResult(exchange, "failed", message=f"{type(e).__name__}: {str(e)[:300]}"))
    return out
