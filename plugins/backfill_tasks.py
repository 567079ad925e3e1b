"""What the tasks of `crypto_backfill` and `crypto_gap_detection` do, as plain functions.

The DAG files only wire these; the backfill logic itself (validation, chunk planning, REST
fetching, gap lifecycle) is `backfill/`'s. crypto_backfill runs the stages of the one backfill
service (`backfill.fill`) as tasks: `validate` (and claim, and read the exchange's listed
symbols once, before any lock), `plan` (`plan_chunks`), one `fill_chunks` per batch
(`fill(..., settle_gaps=False)`), `summarize` (`backfill.fill.settle` once every batch ended).
Every function takes and returns plain JSON (XCom).
Exceptions meant for people: `InvalidParams` (the request must not run; no retry).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)
UTC = timezone.utc

DEFAULT_MAX_TASKS = 16
OPEN_GAPS_SCAN = 10_000          # open gaps looked at per detection run (oldest are triggered first)
DETECT_XCOM_GAPS = 100           # gaps listed in the detect task's XCom (the count is always exact)


class InvalidParams(ValueError):
    """Trigger parameters that must not run; str() is the message for the person who triggered."""


class GapsNotPlanned(RuntimeError):
    """Open gaps exist but no exchange could be asked which symbols it lists; they stay open."""


class BackfillFailed(RuntimeError):
    """Some chunks could not be fetched or stored; the gaps the run was for are marked failed."""


# -- crypto_backfill ------------------------------------------------------------------------

def _gap_ids(params: dict) -> list[int]:
    raw = params.get("gap_ids") or []
    if not isinstance(raw, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise InvalidParams(f"gap_ids must be a list of gap ids (integers), got {str(raw)[:80]}")
    return list(raw)


def validate_params(params: dict, *, now: datetime | None = None, known_symbols=None) -> dict:
    """Trigger params -> {"request": BackfillRequest dict, "dry_run", "gap_ids", "max_tasks",
    "listed"}: `listed` is what the exchange lists, read here (validation reads it anyway) so
    that settling the gaps at the end asks no exchange anything.

    Raises InvalidParams listing every problem ("end (...) must be after start (...)", "kucoin has
    no active spot market FOO-BAR", ...). Gaps named in `gap_ids` are left as they are: bad
    parameters are the run's fault, not the gaps' (a manual run must never stop automatic repair);
    the run fails with the message.
    """
    from backfill.validation import InvalidBackfillRequest, validate_request

    gap_ids = _gap_ids(params)
    if known_symbols is None:
        from backfill.rest import known_symbols as fetch_known
        known_symbols = fetch_known         # cached per process: the read below is validation's own
    try:
        request = validate_request(params.get("exchange"), params.get("symbols"), params.get("start"),
                                   params.get("end"), now=now, known_symbols=known_symbols)
    except InvalidBackfillRequest as e:
        message = "invalid backfill parameters: " + "; ".join(e.problems)
        if gap_ids:
            log.warning("gaps %s left as they were: this run's parameters are invalid", gap_ids)
        raise InvalidParams(message) from None
    max_tasks = params.get("max_tasks", DEFAULT_MAX_TASKS)
    if not isinstance(max_tasks, int) or isinstance(max_tasks, bool) or not 1 <= max_tasks <= 256:
        raise InvalidParams(f"max_tasks must be a whole number from 1 to 256, got {str(max_tasks)[:40]}")
    listed = known_symbols(request.exchange) if callable(known_symbols) else known_symbols
    return {"request": request.to_dict(), "dry_run": bool(params.get("dry_run", False)), "gap_ids": gap_ids,
            "max_tasks": max_tasks, "listed": sorted(listed)}


def validate_and_claim(params: dict, *, now: datetime | None = None, known_symbols=None) -> dict:
    """`validate_params`, then claim the named gaps: adds "owned_gap_ids"."""
    validated = validate_params(params, now=now, known_symbols=known_symbols)
    validated["owned_gap_ids"] = [] if validated["dry_run"] else claim_gaps(validated["gap_ids"])
    return validated


def claim_gaps(gap_ids: Iterable[int]) -> list[int]:
    """open|failed -> backfilling; returns the ids this run owns (others are someone else's)."""
    from backfill import gap_store

    owned = [gap_id for gap_id in gap_ids if gap_store.claim(gap_id)]
    skipped = sorted(set(gap_ids) - set(owned))
    if skipped:
        log.info("gaps %s are already being filled or filled; not claimed", skipped)
    return owned


def plan(validated: dict) -> dict:
    """{"batches": [[chunk dict, ...], ...], "chunks": n, "minutes": m}; no batch on a dry run.

    One mapped task per chunk, up to `max_tasks`; beyond that chunks are dealt round-robin into
    `max_tasks` batches (keeps the number of task instances bounded however long the window).
    """
    from backfill.engine import plan_chunks
    from backfill.validation import BackfillRequest

    request = BackfillRequest.from_dict(validated["request"])
    chunks = [c.to_dict() for c in plan_chunks(request)]
    n = min(len(chunks), validated.get("max_tasks", DEFAULT_MAX_TASKS))
    batches = [chunks[i::n] for i in range(n)] if n else []
    stats = {"chunks": len(chunks), "minutes": request.minutes * len(request.symbols),
             "symbols": len(request.symbols), "tasks": 0 if validated["dry_run"] else len(batches)}
    log.info("planned %(chunks)d chunks (%(minutes)d symbol-minutes of %(symbols)d symbols) in %(tasks)d tasks",
             stats)
    return {"batches": [] if validated["dry_run"] else batches, "stats": stats}


def run_batch(request: dict, batch: Sequence[dict], workers: int = 2) -> dict:
    """Fetch and store the chunks of one batch; the engine's Summary as a dict.

    Raises BackfillFailed when a chunk failed, so Airflow retries the task; chunks already done
    are skipped on the retry (the engine is resumable)."""
    from backfill.engine import Chunk
    from backfill.fill import fill
    from backfill.validation import BackfillRequest

    chunks = [Chunk.from_dict(c) for c in batch]
    # the gaps are settled once, by `summarize`, when every batch has ended
    summary = fill(BackfillRequest.from_dict(request), workers=workers, chunks=chunks, settle_gaps=False).summary
    out = summary.to_dict()
    log.info("batch: %d chunks, %d done, %d skipped, %d partial, %d failed, %d rows, %d requests",
             out["chunks_total"], out["chunks_done"], out["chunks_skipped"], out["chunks_partial"],
             out["chunks_failed"], out["rows_written"], out["requests"])
    if not summary.ok:
        raise BackfillFailed("; ".join(f"{f['symbol']} {f['start']}..{f['end']}: {f['error']}"
                                       for f in summary.failures[:5]))
    return out


_COUNTERS = ("chunks_total", "chunks_done", "chunks_skipped", "chunks_partial", "chunks_failed", "rows_written",
             "empty_minutes", "stream_compared", "stream_differing", "stream_missing", "requests", "retries",
             "rate_limit_waits")


def summarize(validated: dict, stats: dict, results: Sequence[dict | None], batches_planned: int) -> dict:
    """Add up the batch summaries, settle the gaps, return the run summary (XCom).

    A batch with no result failed for good (all retries used). Gaps inside the window become
    `filled` only when every chunk is done or skipped; otherwise the gaps this run claimed
    (`owned_gap_ids`) become `failed` with the reason (backfill.fill.settle). `summary["ok"]`
    says whether it all worked.
    """
    from backfill.fill import settle
    from backfill.validation import BackfillRequest

    got = [r for r in results if r]
    total = {k: sum(int(r.get(k, 0)) for r in got) for k in _COUNTERS}
    failed_batches = max(0, batches_planned - len(got))
    failures = [f for r in got for f in r.get("failures", [])][:20]
    summary = {"request": validated["request"], "dry_run": validated["dry_run"], **stats, **total,
               "batches_planned": batches_planned, "batches_failed": failed_batches, "failures": failures,
               "gaps_filled": [], "gaps_failed": []}
    if validated["dry_run"]:
        summary["ok"] = True
        return summary
    complete = failed_batches == 0 and total["chunks_failed"] == 0 and total["chunks_partial"] == 0
    summary["ok"] = complete
    reason = (f"{failed_batches} of {batches_planned} tasks failed" if failed_batches else
              f"{total['chunks_failed']} chunks failed, {total['chunks_partial']} not settled yet")
    settled = settle(BackfillRequest.from_dict(validated["request"]), complete=complete,
                     listed=validated.get("listed"), owned=validated.get("owned_gap_ids", []),
                     rows_written=total["rows_written"], reason=reason)
    summary["gaps_filled"], summary["gaps_failed"] = settled.filled, settled.failed
    return summary


def format_summary(summary: dict) -> str:
    req = summary["request"]
    lines = [f"backfill {req['exchange']} {len(req['symbols'])} symbols {req['start']} .. {req['end']}"
             + (" (dry run)" if summary["dry_run"] else ""),
             f"  chunks: {summary.get('chunks', 0)} planned, {summary['chunks_done']} done, "
             f"{summary['chunks_skipped']} skipped, {summary['chunks_partial']} partial, "
             f"{summary['chunks_failed']} failed; tasks failed: {summary['batches_failed']}",
             f"  rows written: {summary['rows_written']}, confirmed-empty minutes: {summary['empty_minutes']}, "
             f"REST requests: {summary['requests']} (retries {summary['retries']}, "
             f"rate-limit waits {summary['rate_limit_waits']})",
             f"  gaps filled: {summary['gaps_filled'] or 'none'}; gaps failed: {summary['gaps_failed'] or 'none'}"]
    lines += [f"  failure: {f.get('symbol')} {f.get('start')}: {f.get('error')}" for f in summary["failures"][:5]]
    return "\n".join(lines)


# -- crypto_gap_detection -------------------------------------------------------------------

def detect(lookback_hours: float, settle_s: float, now: datetime | None = None) -> dict:
    """Record new gaps (backfill.detect.detect_gaps); returns {"found": n, "gaps": the first
    DETECT_XCOM_GAPS gaps created or extended}."""
    from datetime import timedelta

    from backfill.detect import detect_gaps
    from backfill.markets import listed_markets

    found = detect_gaps(now, lookback=timedelta(hours=float(lookback_hours)), settle=timedelta(seconds=float(settle_s)),
                        listed=listed_markets())
    for gap in found[:DETECT_XCOM_GAPS]:
        log.info("gap %s %s %s %s .. %s (%s)", gap.id, gap.exchange, gap.symbol or "*", gap.gap_start,
                 gap.gap_end, gap.kind)
    log.info("%d gaps created or extended", len(found))
    return {"found": len(found), "gaps": [_jsonable(g.to_dict()) for g in found[:DETECT_XCOM_GAPS]]}


def _jsonable(d: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in d.items()}


def backfill_triggers(limit: int, run_id: str, now: datetime | None = None, known_symbols=None) -> list[dict]:
    """Open gaps, oldest first -> kwargs for one TriggerDagRunOperator each (at most `limit`):
    {"conf": crypto_backfill params, "trigger_run_id": ...}.

    Gaps of one exchange with the same window (detection finds many per-symbol gaps at once) share
    one run: its conf lists all their symbols and gap ids. A gap that can never become a valid
    request (no tracked symbol, unknown market, ...) is marked failed with the reason; a gap whose
    exchange cannot be reached now stays open for the next run (GapsNotPlanned if none could be
    planned at all).
    """
    import re

    from backfill import gap_store
    from backfill.fill import request_for_gap
    from backfill.metrics import count_handled

    runs: dict[tuple, dict] = {}
    unreachable: dict[str, str] = {}        # exchange -> why its markets could not be read
    # open_gaps(limit) keeps the newest `limit`; the scheduler wants the oldest (no gap starves)
    for gap in gap_store.open_gaps(limit=OPEN_GAPS_SCAN):
        if len(runs) >= int(limit) and (not runs or gap.gap_start > max(start for _, start, _ in runs)):
            break                            # every run is planned; later gaps wait for the next check
        if gap.exchange in unreachable:
            continue
        try:
            request = request_for_gap(gap, now=now, known_symbols=known_symbols)
        except ValueError as e:              # this gap can never become a valid request
            log.warning("gap %s cannot be backfilled: %s", gap.id, e)
            gap_store.mark(gap.id, "failed", error=str(e)[:500], permanent=True)
            continue
        except Exception as e:               # the exchange is unreachable now: the gap stays open
            count_handled("backfill_tasks.backfill_triggers", e)
            unreachable[gap.exchange] = f"{type(e).__name__}: {str(e)[:300]}"
            log.error("gap %s left open: %s", gap.id, unreachable[gap.exchange])
            continue
        key = (request.exchange, request.start, request.end)
        if key not in runs:
            if len(runs) >= int(limit):
                continue
            runs[key] = {"symbols": set(), "gap_ids": []}
        runs[key]["symbols"].update(request.symbols)
        runs[key]["gap_ids"].append(gap.id)
    if unreachable and not runs:
        raise GapsNotPlanned("no backfill could be planned; " + "; ".join(
            f"{ex}: {why}" for ex, why in sorted(unreachable.items())))
    safe_run = re.sub(r"[^A-Za-z0-9_.:+-]", "_", run_id)[-80:]
    out = []
    for (exchange, start, end), run in runs.items():
        conf = {"exchange": exchange, "symbols": sorted(run["symbols"]), "start": start.isoformat(),
                "end": end.isoformat(), "dry_run": False, "gap_ids": run["gap_ids"]}
        out.append({"conf": conf, "trigger_run_id": f"gaps_{run['gap_ids'][0]}_{len(run['gap_ids'])}__{safe_run}"})
    log.info("%d backfill runs to trigger for %d gaps", len(out), sum(len(r["gap_ids"]) for r in runs.values()))
    return out


def as_int(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidParams(f"{what} must be a whole number, got {str(value)[:40]}") from None
