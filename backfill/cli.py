"""`cryptopipe backfill ...`, `cryptopipe gaps ...` and `cryptopipe reconcile ...` (dispatched by
cryptopipe/cli.py).

backfill_main(argv) -> int: 0 all chunks done, 1 some chunk failed or was not settled,
2 invalid parameters (the message says which and why).
gaps_main(argv) -> int: lists gaps (optionally detects first, optionally fills open ones).
reconcile_main(argv) -> int: reconciles the next window of each exchange (or prints --status).
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta

from common.topics import EXCHANGES


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit code 2, with our wording
        self.print_usage(sys.stderr)
        print(f"{self.prog}: invalid parameters: {message}", file=sys.stderr)
        raise SystemExit(2)


def _backfill_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cryptopipe backfill",
                description="Fill 1-minute candles of candles_1m from the exchange's REST API (source 'rest').")
    p.add_argument("--exchange", required=True, help=" or ".join(EXCHANGES))
    p.add_argument("--symbols", required=True, help="comma-separated BASE-QUOTE symbols, or ALL")
    p.add_argument("--start", required=True, help="ISO 8601 UTC, e.g. 2024-05-01T12:00Z (floored to the minute)")
    p.add_argument("--end", required=True, help="ISO 8601 UTC, exclusive (ceiled to the minute)")
    p.add_argument("--dry-run", action="store_true", help="validate and plan only; fetch nothing")
    p.add_argument("--force", action="store_true", help="fetch again chunks that are already done")
    p.add_argument("--workers", type=int, default=4, help="concurrent requests (default 4)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def backfill_main(argv: list[str] | None = None) -> int:
    from backfill.validation import InvalidBackfillRequest, validate_request

    args = _backfill_parser().parse_args(argv)
    if not 1 <= args.workers <= 32:
        print("cryptopipe backfill: invalid parameters: --workers must be between 1 and 32", file=sys.stderr)
        return 2
    try:
        request = validate_request(args.exchange, args.symbols, args.start, args.end)
    except InvalidBackfillRequest as e:
        print("cryptopipe backfill: invalid parameters:", file=sys.stderr)
        for problem in e.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    except Exception as e:  # markets could not be loaded: not the caller's mistake
        print(f"cryptopipe backfill: cannot check the symbols with {args.exchange}: {e}", file=sys.stderr)
        return 1

    from backfill.engine import plan_chunks
    from backfill.fill import fill

    chunks = plan_chunks(request)
    if args.dry_run:
        _print_summary(fill(request, dry_run=True, chunks=chunks).summary, args.json)
        return 0

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rows]} rows"), TimeElapsedColumn(),
                  transient=args.json, disable=args.json or not sys.stderr.isatty(),
                  console=None) as bar:
        task = bar.add_task(f"{request.exchange} {len(request.symbols)} symbol(s)", total=len(chunks), rows=0)
        rows = 0

        def progress(result):
            nonlocal rows
            rows += result.rows_written
            bar.update(task, advance=1, rows=rows)

        done = fill(request, progress=progress, workers=args.workers, force=args.force, chunks=chunks)
    _print_summary(done.summary, args.json, done.settled.filled)
    return 0 if done.complete else 1


def _print_summary(summary, as_json: bool, filled: list[int] | None = None) -> None:
    d = summary.to_dict()
    d["gaps_filled"] = filled or []
    if as_json:
        print(json.dumps(d, indent=2, default=str))
        return
    r = d["request"]
    head = "dry run: would fetch" if d["dry_run"] else "backfilled"
    print(f"{head} {r['exchange']} {len(r['symbols'])} symbol(s) {r['start']} .. {r['end']}: "
          f"{d['chunks_total']} chunk(s), {d['minutes']} symbol-minutes")
    if not d["dry_run"]:
        print(f"  chunks done {d['chunks_done']}, skipped (already done) {d['chunks_skipped']}, "
              f"not settled {d['chunks_partial']}, failed {d['chunks_failed']}")
        print(f"  rows written {d['rows_written']}, confirmed-empty minutes {d['empty_minutes']}, "
              f"requests {d['requests']}, retries {d['retries']}, rate-limit waits {d['rate_limit_waits']}, "
              f"{d['elapsed_s']} s")
        if filled:
            print(f"  gaps marked filled: {', '.join(map(str, filled))}")
        for f in d["failures"]:
            print(f"  FAILED {f['symbol']} {f['start']} .. {f['end']}: {f['error']}")


def gaps_main(argv: list[str] | None = None) -> int:
    from backfill import gap_store
    from backfill.detect import detect_gaps
    from backfill.fill import fill_gap
    from backfill.markets import listed_markets
    from backfill.metrics import count_handled

    p = _Parser(prog="cryptopipe gaps", description="List gaps in the stored 1-minute history and their status.")
    p.add_argument("--status", choices=gap_store.STATUSES)
    p.add_argument("--exchange", choices=EXCHANGES)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--detect", action="store_true", help="run gap detection first")
    p.add_argument("--lookback-hours", type=float, default=6.0, help="how far back --detect looks (default 6)")
    p.add_argument("--fill", action="store_true", help="backfill every open gap (after --detect)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.limit <= 10_000:
        print("cryptopipe gaps: invalid parameters: --limit must be between 1 and 10000", file=sys.stderr)
        return 2
    if not 0 < args.lookback_hours <= 24 * 31:
        print("cryptopipe gaps: invalid parameters: --lookback-hours must be in (0, 744]", file=sys.stderr)
        return 2
    code = 0
    if args.detect:
        exchanges = [args.exchange] if args.exchange else None
        found = detect_gaps(lookback=timedelta(hours=args.lookback_hours), exchanges=exchanges,
                            listed=listed_markets(exchanges))
        if not args.json:
            print(f"detection: {len(found)} gap(s) new or extended")
    if args.fill:
        for gap in gap_store.open_gaps(args.exchange, limit=args.limit):
            try:
                summary = fill_gap(gap)
            except Exception as e:  # recorded on the gap as failed; keep filling the others
                count_handled("cli.gaps_fill", e)
                print(f"gap {gap.id}: failed: {e}", file=sys.stderr)
                code = 1
                continue
            if summary is not None and not args.json:
                print(f"gap {gap.id}: {'filled' if summary.ok else 'failed'} "
                      f"({summary.rows_written} rows, {summary.chunks_failed} failed chunk(s))")
            if summary is not None and not summary.ok:
                code = 1
    rows = gap_store.list_gaps(args.status, args.exchange, args.limit)
    if args.json:
        print(json.dumps([g.to_dict() for g in rows], indent=2))
        return code
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"gaps ({len(rows)} shown)")
    for col in ("id", "exchange", "symbol", "start (UTC)", "end (UTC)", "min", "kind", "status", "rows", "error"):
        table.add_column(col)
    for g in rows:
        table.add_row(str(g.id), g.exchange, g.symbol or "*", f"{g.gap_start:%Y-%m-%d %H:%M}",
                      f"{g.gap_end:%Y-%m-%d %H:%M}", str(g.minutes), g.kind or "", g.status,
                      "" if g.rows_filled is None else str(g.rows_filled), (g.error or "")[:60])
    Console().print(table)
    return code


def reconcile_main(argv: list[str] | None = None) -> int:
    """`cryptopipe reconcile`: 0 every exchange reconciled (or nothing to do, or RECONCILE=off),
    1 some minutes were left for a later run, 2 invalid parameters."""
    p = _Parser(prog="cryptopipe reconcile",
                description="Replace the stream's candles of every minute closed at least RECONCILE_SETTLE_SECONDS "
                            "ago by the exchange's own (source 'rest'), and record how far they were (candle_checks).")
    p.add_argument("--exchange", choices=EXCHANGES, help="one exchange (default: both)")
    p.add_argument("--status", action="store_true",
                   help="print how far each exchange is reconciled and what the stream's candles missed; fetch nothing")
    p.add_argument("--settle-seconds", type=int, help="override RECONCILE_SETTLE_SECONDS")
    p.add_argument("--max-minutes", type=int, help="override RECONCILE_MAX_MINUTES (the most minutes per exchange)")
    p.add_argument("--workers", type=int, default=4, help="concurrent requests (default 4)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for name, value, lo, hi in (("--settle-seconds", args.settle_seconds, 0, 86400),
                                ("--max-minutes", args.max_minutes, 1, 1440), ("--workers", args.workers, 1, 32)):
        if value is not None and not lo <= value <= hi:
            print(f"cryptopipe reconcile: invalid parameters: {name} must be between {lo} and {hi}", file=sys.stderr)
            return 2
    exchanges = [args.exchange] if args.exchange else list(EXCHANGES)
    if args.status:
        return _print_reconcile_status(exchanges, args.json)

    from common.settings import get_settings

    if not get_settings().reconcile:
        message = "reconciliation is off (RECONCILE=off): nothing done"
        print(json.dumps({"status": "off", "message": message}) if args.json else message)
        return 0

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from backfill.reconcile import run_reconcile

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rows]} rows"), TimeElapsedColumn(),
                  transient=args.json, disable=args.json or not sys.stderr.isatty()) as bar:
        tasks: dict[str, tuple[int, list[int]]] = {}

        def on_plan(exchange, request, chunks):
            tasks[exchange] = (bar.add_task(f"{exchange} {len(request.symbols)} symbol(s) "
                                            f"{request.start:%H:%M}..{request.end:%H:%M}", total=len(chunks), rows=0),
                               [0])

        def on_chunk(exchange, result):
            task, rows = tasks[exchange]
            rows[0] += result.rows_written
            bar.update(task, advance=1, rows=rows[0])

        results = run_reconcile(exchanges=exchanges, workers=args.workers, on_plan=on_plan, on_chunk=on_chunk,
                                settle=None if args.settle_seconds is None else timedelta(seconds=args.settle_seconds),
                                max_minutes=args.max_minutes)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, default=str))
    else:
        for r in results:
            d = r.to_dict()
            s = d["summary"]
            line = f"{r.exchange}: {r.status}"
            if r.start is not None:
                line += f" {r.start:%Y-%m-%d %H:%M} .. {r.end:%H:%M} UTC, {r.symbols} symbol(s)"
            if s:
                line += (f"; {s['chunks_done']} chunk(s) done, {s['chunks_skipped']} skipped, {s['chunks_failed']} failed; "
                         f"{s['requests']} requests, {s['rows_written']} rows written; stream candles compared "
                         f"{s['stream_compared']}, differing {s['stream_differing']}, missing {s['stream_missing']}")
            if r.reconciled_until is not None:
                line += f"; reconciled until {r.reconciled_until:%Y-%m-%d %H:%M} UTC"
            print(line + (f" ({r.message})" if r.message else ""))
    return 0 if all(r.ok for r in results) else 1


def _print_reconcile_status(exchanges: list[str], as_json: bool) -> int:
    from common.candle_checks import divergence
    from common.db import connect
    from common.settings import get_settings

    conn = connect()
    try:
        rows = divergence(conn, exchanges=exchanges)
    finally:
        conn.close()
    on = get_settings().reconcile
    if as_json:
        print(json.dumps({"reconcile": on, "exchanges": rows}, indent=2, default=str))
        return 0
    window = rows[0]["window_minutes"] if rows else 60
    print(f"reconciliation: {'on' if on else 'off (RECONCILE=off)'}; stream candles against the exchange's "
          f"over the newest {window} checked minutes")
    pct = lambda v: "–" if v is None else f"{float(v):.4%}"  # noqa: E731
    for r in rows:
        until = f"{r['reconciled_until']:%Y-%m-%d %H:%M} UTC" if r["reconciled_until"] else "never"
        if r["last_minute"] is None:
            print(f"{r['exchange']}: reconciled until {until}; no check yet")
            continue
        d = r["max_rel_diff"]
        share = f" ({r['differing'] / r['compared']:.2%})" if r["compared"] else ""
        print(f"{r['exchange']}: reconciled until {until}; newest check {r['last_minute']:%Y-%m-%d %H:%M} UTC; "
              f"{r['minutes']} minute(s): {r['compared']} stream candle(s) compared, {r['differing']} differing"
              f"{share}, {r['missing']} missing; largest relative difference "
              + ", ".join(f"{f} {pct(d[f])}" for f in ("open", "high", "low", "close", "volume")))
    return 0
