"""Backfill as one service: `fill(request)` plans chunks, fetches them within the exchange's
rate-limit budget, writes them, and settles the gaps the request covers.

Every way a backfill starts goes through here: `cryptopipe backfill` (backfill/cli.py), gap
filling (`fill_gap`, used by `cryptopipe gaps --fill` and the fault harness), reconciliation
(backfill/reconcile.py, purpose "reconcile") and the crypto_backfill DAG (plugins/backfill_tasks.py),
which spreads the same stages over its tasks: `plan_chunks` in `plan`, `fill(..., settle_gaps=False)`
per batch of chunks in `fill_chunks`, `settle` once every batch has ended in `summarize`.

- `fill(request, *, listed=None, owned=(), chunks=None, progress=None, workers=4, force=False,
  dry_run=False, purpose="backfill", settle_gaps=True) -> FillResult`
  listed: the exchange's active spot markets (read here, before any lock, when not given: the
  request's validation has just read them, so this is the 10-minute cache of backfill.rest).
  owned: ids of gaps this fill claimed: when it does not complete they become `failed` with the
  reason; when it completes and one was not inside the request, it is reopened.
- `settle(request, *, complete, listed, owned=(), rows_written=0, reason="") -> Settled`: a
  complete fill marks the gaps inside it filled (gap_store.mark_covered), then the owned gaps
  not filled are reopened (complete) or failed (not complete).
- `request_for_gap(gap, *, now=None, known_symbols=None) -> BackfillRequest`
- `fill_gap(gap | id, *, workers=4, progress=None, now=None, known_symbols=None) -> Summary | None`:
  claim, fill, settle; None when another worker has the gap.

A fill is complete when no chunk failed and none was left unsettled (minutes too recent to confirm).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from backfill import gap_store
from backfill.engine import Chunk, ChunkResult, Summary, run_backfill
from backfill.gap_store import Gap
from backfill.markets import gap_symbols
from backfill.metrics import count_handled
from backfill.validation import BackfillRequest, validate_request

log = logging.getLogger("backfill.fill")


class Settled(NamedTuple):
    filled: list[int]        # gaps marked filled (inside the request, every symbol done)
    failed: list[int]        # owned gaps marked failed (the fill did not complete)
    reopened: list[int]      # owned gaps a complete fill did not cover, open again


@dataclass
class FillResult:
    summary: Summary
    settled: Settled = field(default_factory=lambda: Settled([], [], []))

    @property
    def complete(self) -> bool:
        return is_complete(self.summary)

    def to_dict(self) -> dict:
        return {**self.summary.to_dict(), "complete": self.complete, "gaps_filled": self.settled.filled,
                "gaps_failed": self.settled.failed, "gaps_reopened": self.settled.reopened}


def is_complete(summary: Summary) -> bool:
    return summary.ok and summary.chunks_partial == 0 and not summary.dry_run


def failure_reason(summary: Summary) -> str:
    """Why a fill did not complete, in a line: the first failed chunks, or the unsettled ones."""
    return ("; ".join(f"{f['symbol']} {f['start']}: {f['error']}" for f in summary.failures[:3])
            or f"{summary.chunks_partial} chunk(s) not settled yet")


def fill(request: BackfillRequest, *, listed: Iterable[str] | None = None, owned: Sequence[int] = (),
         chunks: list[Chunk] | None = None, progress: Callable[[ChunkResult], None] | None = None,
         workers: int = 4, force: bool = False, dry_run: bool = False, purpose: str = "backfill",
         settle_gaps: bool = True) -> FillResult:
    """Plan (unless `chunks` are given), fetch and write `request`, then settle its gaps (see the
    module docstring). A dry run only plans."""
    if dry_run:
        return FillResult(run_backfill(request, dry_run=True, chunks=chunks, purpose=purpose))
    if settle_gaps and listed is None:
        from backfill.rest import known_symbols
        listed = known_symbols(request.exchange, purpose)
    try:
        summary = run_backfill(request, progress, workers=workers, force=force, chunks=chunks, purpose=purpose)
    except Exception as e:  # raised on: the gaps it owns record why and are retried later
        _fail_owned(owned, f"{type(e).__name__}: {str(e)[:500]}")
        raise
    if not settle_gaps:
        return FillResult(summary)
    return FillResult(summary, settle(request, complete=is_complete(summary), listed=listed, owned=owned,
                                      rows_written=summary.rows_written, reason=failure_reason(summary)))


def settle(request: BackfillRequest, *, complete: bool, listed: Iterable[str] | None, owned: Sequence[int] = (),
           rows_written: int = 0, reason: str = "") -> Settled:
    """Settle the gaps of a fill that has ended (see the module docstring). listed: the exchange's
    symbols, read by the caller before (None: exchange-wide gaps are left as they are)."""
    filled = gap_store.mark_covered(request, listed) if complete else []
    failed, reopened = [], []
    for gap_id in owned:
        if gap_id in filled:
            continue
        status = "open" if complete else "failed"
        try:
            if complete:
                gap = gap_store.mark(gap_id, "open")
                log.warning("gap %s (%s..%s) not entirely inside the backfilled window; reopened",
                            gap_id, gap.gap_start, gap.gap_end)
                reopened.append(gap_id)
            else:
                gap_store.mark(gap_id, "failed", rows_filled=rows_written, error=reason)
                failed.append(gap_id)
        except (LookupError, ValueError) as e:  # gone, or settled by another run meanwhile
            count_handled("fill.settle", e)
            log.warning("gap %s not marked %s: %s", gap_id, status, e)
    return Settled(filled, failed, reopened)


def _fail_owned(owned: Sequence[int], error: str, *, permanent: bool = False) -> None:
    for gap_id in owned:
        try:
            gap_store.mark(gap_id, "failed", error=error, permanent=permanent)
        except Exception as e:  # noqa: BLE001 - the error being raised matters more; this one is logged
            count_handled("fill.fail_owned", e)
            log.error("gap %s could not be marked failed (%s: %s) after: %s", gap_id, type(e).__name__, e, error)


# -- gap filling ------------------------------------------------------------------------------

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
                            known_symbols=known_symbols,
                            max_window=max(gap.gap_end - gap.gap_start, timedelta(minutes=1)))


def fill_gap(gap: "Gap | int", *, workers: int = 4, progress: Callable[[ChunkResult], None] | None = None,
             now: datetime | None = None, known_symbols: Iterable[str] | None = None) -> Summary | None:
    """Claim `gap`, fill it, settle it (filled, or failed with the reason); returns the engine's
    Summary, or None when the gap was not claimed (another worker has it, or it is filled).
    known_symbols: the exchange's listed markets (read after the claim when not given)."""
    gap = gap_store.get_gap(gap) if isinstance(gap, int) else gap
    if not gap_store.claim(gap.id):
        return None
    try:
        if known_symbols is None:
            from backfill.rest import known_symbols as fetch_known
            known_symbols = fetch_known(gap.exchange)
        listed = set(known_symbols)
        request = request_for_gap(gap, now=now, known_symbols=listed)
    except ValueError as e:  # validation: this request can never succeed
        _fail_owned([gap.id], f"{type(e).__name__}: {str(e)[:500]}", permanent=True)
        raise
    except Exception as e:  # the markets could not be read: the gap records why and is retried later
        _fail_owned([gap.id], f"{type(e).__name__}: {str(e)[:500]}")
        raise
    return fill(request, listed=listed, owned=[gap.id], workers=workers, progress=progress).summary
