"""REST backfill and gap detection: plain Python, usable without Airflow, cheap to import.

Importing `backfill` or any submodule costs no network and no database; ccxt, psycopg2 and boto3
work starts only when a function is called. Settings come from `common.settings.get_settings()`.

Public interface (what the DAGs and the CLI use)
------------------------------------------------

backfill.validation
    validate_request(exchange, symbols, start, end, *, now=None, known_symbols=None,
                     max_window=None) -> BackfillRequest
        Raises InvalidBackfillRequest (a ValueError; `.problems` is the list of messages, str()
        joins them). symbols: list, comma-separated text, or 'ALL'. Times: datetime or ISO text,
        naive = UTC. Window [start floored, end ceiled) in whole minutes, clamped to closed
        minutes. Checks: exchange known, symbols canonical and known to the exchange, end after
        start, nothing in the future, nothing before 2017-07-01, window <= max_window
        (settings.backfill_max_window_hours).
    BackfillRequest(exchange, symbols: tuple, start, end) with .to_dict()/.from_dict(), .minutes

backfill.engine
    plan_chunks(request) -> list[Chunk]          one REST request each (Binance 1000 min, KuCoin 1500)
    run_chunk(chunk | dict, *, force=False, raise_on_error=False) -> ChunkResult
        Idempotent and resumable: skipped if a done chunk covers it; raw responses kept in S3 at
        common.s3.backfill_response_key(...); candles upserted into candles_1m with source 'rest'
        (a REST candle replaces a stream candle); chunk recorded in backfill_chunks.
        status: done | skipped | partial (minutes too recent to confirm, not recorded) | failed.
    run_backfill(request, progress=None, *, workers=4, force=False, dry_run=False) -> Summary   (the fetch-and-write
        stage; callers start a backfill with backfill.fill.fill, which also settles its gaps)
    Chunk / ChunkResult / Summary: .to_dict() is plain JSON (XCom); Chunk.from_dict(d).
    Summary.ok is True when no chunk failed.

backfill.fill                                           the one entry of every backfill
    fill(request, *, listed=None, owned=(), chunks=None, progress=None, workers=4, force=False,
         dry_run=False, purpose="backfill", settle_gaps=True) -> FillResult
        plan chunks -> fetch within the rate-limit budget -> write -> settle the gaps it covers.
        Used by the CLI, the crypto_backfill tasks (its stages spread over tasks), gap filling and
        reconciliation. FillResult(summary, settled) .complete, .to_dict().
    settle(request, *, complete, listed, owned=(), rows_written=0, reason="") -> Settled(filled, failed, reopened)
    request_for_gap(gap, *, now=None, known_symbols=None) -> BackfillRequest
        an exchange-wide gap asks for gap_symbols(listed): every listed symbol, within SYMBOLS
    fill_gap(gap | id, *, workers=4, progress=None) -> Summary | None   claim + fill + settle

backfill.detect                                         detection queries
    detect_gaps(now=None, *, lookback=6h, settle=60s, stale_after=30s, exchanges=None, listed=None) -> list[Gap]
        Records into `gaps` (kinds uncovered | silence | dlq | missing_candles); returns gaps
        created or extended by this run; never duplicates. See the module docstring for the rules.
    tracked_symbols(exchange, start, end) -> list[str]

backfill.gap_store                                      the gaps table
    open_gaps(exchange=None, limit=100) -> list[Gap]      oldest first
    list_gaps(status=None, exchange=None, limit=100) -> list[Gap]   newest first
    get_gap(id) -> Gap; reopen_failed(now=None) -> list[int]
    claim(gap_id) -> bool                                  open|failed -> backfilling (atomic)
    mark(gap_id, status, *, rows_filled=None, error=None, permanent=False) -> Gap
    mark_covered(request, listed) -> list[int]   gaps inside a complete backfill -> filled (no network)
    Gap(id, exchange, symbol|None, gap_start, gap_end, status, kind, detected_at, filled_at,
        rows_filled, error) with .to_dict()

backfill.intervals                                      pure interval arithmetic of detection
backfill.markets
    listed_markets(exchanges=None) -> dict[str, set[str]]   markets per exchange (network; unreachable ones left out)
    gap_symbols(listed) -> list[str]                        the symbols an exchange-wide gap is about
backfill.metrics    count_handled(where, error): every error caught and gone on after is logged and counted
backfill.gaps       a facade re-exporting the names above (older imports keep working)

backfill.reconcile
    reconcile_exchange(exchange, *, now=None, listed=None, settle=None, max_minutes=None, ...) -> ReconcileResult
    run_reconcile(now=None, *, exchanges=None, ...) -> list[ReconcileResult]
        Every minute closed RECONCILE_SETTLE_SECONDS ago and not reconciled yet becomes the
        exchange's candle (fill with purpose="reconcile"); reconcile_state records how
        far; see the module docstring for where a run starts and how much it does.
    plan_window(now, *, reconciled_until, first_session, settle, lookback, max_minutes) -> (start, end) | None

backfill.checks
    What a REST write says about the stream candle it replaces, added to candle_checks in the
    write's transaction (store.write_chunk); relative_difference, MinuteCheck, minute_checks.

backfill.rest
    known_symbols(exchange, purpose="backfill") -> set[str]   active spot markets, canonical, cached 10 min
    RestFetcher(exchange).fetch_minutes(symbol, start, end) -> FetchResult   (one per thread)

backfill.ratelimit
    budget_for(exchange, purpose="backfill") -> ExchangeBudget   one per exchange and purpose per
        process, shared by threads, capped at SHARES[purpose] of the exchange's limit (backfill
        80 %, reconcile 25 %): acquire(weight), observe(status, headers, body), pause(seconds), backoff(attempt)

backfill.cli
    backfill_main(argv) -> int   `cryptopipe backfill --exchange --symbols --start --end
                                  [--dry-run] [--force] [--workers N] [--json]`; exit 2 = bad params
    gaps_main(argv) -> int       `cryptopipe gaps [--status] [--exchange] [--detect] [--fill] [--json]`
    reconcile_main(argv) -> int  `cryptopipe reconcile [--exchange] [--status] [--settle-seconds N]
                                  [--max-minutes N] [--workers N] [--json]`

Tables: candles_1m, gaps (001), backfill_chunks (003_backfill.sql), reconcile_state and
candle_checks (007_reconcile.sql; read side and Prometheus collector: common/candle_checks.py).

Notes for callers
-----------------
- Tracked symbols (whose minutes (c) checks): the symbols with candles on that exchange in the
  window and every listed market, restricted to SYMBOLS when set. An exchange-wide gap is
  backfilled for every listed symbol (gap_symbols).
- Detection's horizon is always the lookback window: the time before an exchange's first
  session is uncovered, so the first detection after a fresh start fills the lookback before
  the stream began, and the partly seen first minute, with REST candles.
- Keep the detector's `settle` >= 60 s (> backfill.rest.SETTLE_S = 30 s): then every minute of a
  detected gap is old enough for a missing REST row to count as confirmed-empty, and backfills
  of detected gaps never end `partial`.
- Rate limits are per process: separate processes (Airflow tasks) coordinate only through the
  exchange's answers (used-weight headers, 429 Retry-After, 418), which every worker honours.
- A REST candle always replaces a stream candle for the same minute (and the loader never
  overwrites a 'rest' row), so backfilling a minute the stream saw is safe and makes it exact.
- Coverage (a) is per exchange, and per shard when an extractor spreads its symbols over several
  connections: a shard down while the others stream leaves per-symbol `uncovered` gaps for its
  symbols (stream_sessions.symbols, `intervals.scoped_uncovered`). Silence (b) stays per exchange; a
  shard that is connected but silent is caught by the extractor's stall detector (it reconnects,
  which ends the session) and by (c).
"""
