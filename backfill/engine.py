"""The backfill engine: plan a request into chunks, run chunks (idempotent, resumable), summarize.

- `plan_chunks(request) -> list[Chunk]`: per symbol, [start, end) cut on a grid of the plug's
  CANDLES_PER_REQUEST minutes counted from the epoch (Binance 1000, KuCoin 1500), so each chunk
  is one REST request and overlapping requests produce the same chunk cells.
- `run_chunk(chunk, *, force=False, raise_on_error=False) -> ChunkResult`: skip if a finished
  chunk already covers it (unless force); a chunk that ended less than backfill.rest.SETTLE_S
  (30 s) ago first waits until then (so it never ends `partial` for a validated request);
  else fetch every minute (backfill.rest), keep the raw
  responses in S3, then in one Postgres transaction upsert `candles_1m` (source 'rest') and
  record the chunk in `backfill_chunks`. Safe to repeat and to kill at any point: a killed chunk
  was not recorded, so the re-run fetches it again, and the upsert writes no duplicate.
  With raise_on_error=True a failed chunk raises `ChunkFailed` (for Airflow task retries).
- `run_backfill(request, progress=None, *, workers=4, force=False, dry_run=False,
  purpose="backfill") -> Summary`: runs every chunk on a thread pool (one ccxt client per
  thread, one shared rate budget per exchange and purpose: `purpose="reconcile"` spends at most
  the reconciliation's share of the exchange's weight, backfill.ratelimit.SHARES);
  `progress(result)` is called after each chunk; dry_run only plans.

`Chunk`, `ChunkResult`, `Summary` have `to_dict()` (plain JSON: ISO-8601 times, ints, strings)
and `from_dict()` where a DAG needs to pass them through XCom; `run_chunk` also accepts the dict.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from backfill.rest import FetchError, RestFetcher
from backfill.validation import BackfillRequest
from common.exchanges import EXCHANGES, plug

UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ChunkFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Chunk:
    exchange: str
    symbol: str
    start: datetime
    end: datetime

    @property
    def minutes(self) -> int:
        return int((self.end - self.start).total_seconds() // 60)

    def to_dict(self) -> dict:
        return {"exchange": self.exchange, "symbol": self.symbol,
                "start": self.start.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_dict(cls, d: "dict | Chunk") -> "Chunk":
        if isinstance(d, Chunk):
            return d
        from backfill.validation import normalize_symbol, parse_time
        if d.get("exchange") not in EXCHANGES:
            raise ValueError(f"chunk has an unknown exchange: {str(d.get('exchange'))[:40]!r}")
        return cls(exchange=d["exchange"], symbol=normalize_symbol(d["symbol"]),
                   start=parse_time(d["start"], "chunk start"), end=parse_time(d["end"], "chunk end"))


@dataclass
class ChunkResult:
    chunk: dict
    status: str                    # done | skipped | partial | failed
    rows_written: int = 0          # candles inserted or changed
    empty_minutes: int = 0         # minutes recorded as confirmed-empty
    stream_compared: int = 0       # stream candles replaced, held against the exchange's (candle_checks)
    stream_differing: int = 0      # of those, different from the exchange's
    stream_missing: int = 0        # minutes traded with no stream candle
    requests: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    s3_key: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Summary:
    request: dict
    dry_run: bool = False
    chunks_total: int = 0
    chunks_done: int = 0
    chunks_skipped: int = 0
    chunks_partial: int = 0
    chunks_failed: int = 0
    minutes: int = 0               # symbol-minutes requested
    rows_written: int = 0
    empty_minutes: int = 0
    stream_compared: int = 0
    stream_differing: int = 0
    stream_missing: int = 0
    requests: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    elapsed_s: float = 0.0
    failures: list[dict] = field(default_factory=list)   # first 20: chunk + error

    @property
    def ok(self) -> bool:
        return self.chunks_failed == 0

    def add(self, r: ChunkResult) -> None:
        setattr(self, f"chunks_{r.status}", getattr(self, f"chunks_{r.status}") + 1)
        for counter in ("rows_written", "empty_minutes", "stream_compared", "stream_differing", "stream_missing"):
            setattr(self, counter, getattr(self, counter) + getattr(r, counter))
        self.requests += r.requests
        self.retries += r.retries
        self.rate_limit_waits += r.rate_limit_waits
        if r.status == "failed" and len(self.failures) < 20:
            self.failures.append({**r.chunk, "error": r.error})

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def plan_chunks(request: BackfillRequest) -> list[Chunk]:
    size = plug(request.exchange).CANDLES_PER_REQUEST
    chunks = []
    for symbol in request.symbols:
        t = request.start
        while t < request.end:
            index = int((t - _EPOCH).total_seconds() // 60)
            cell_end = _EPOCH + timedelta(minutes=(index // size + 1) * size)
            end = min(cell_end, request.end)
            chunks.append(Chunk(request.exchange, symbol, t, end))
            t = end
    return chunks


# one ccxt client per worker thread and exchange; one S3 client per process
_local = threading.local()
_s3_lock = threading.Lock()
_s3_client = None


def _fetcher(exchange: str, purpose: str = "backfill") -> RestFetcher:
    from backfill.ratelimit import budget_for

    fetchers = getattr(_local, "fetchers", None)
    if fetchers is None:
        fetchers = _local.fetchers = {}
    if (exchange, purpose) not in fetchers:
        fetchers[(exchange, purpose)] = RestFetcher(exchange, budget=budget_for(exchange, purpose))
    return fetchers[(exchange, purpose)]


def reset_clients() -> None:
    """Forget cached clients of this thread and the S3 client (settings changed: tests)."""
    global _s3_client
    _local.fetchers = {}
    with _s3_lock:
        _s3_client = None


def _s3():
    global _s3_client
    with _s3_lock:
        if _s3_client is None:
            from common.s3 import make_s3_client
            _s3_client = make_s3_client()
        return _s3_client


def _wait_until_settled(end: datetime, sleep=time.sleep) -> float:
    """A chunk ending less than SETTLE_S ago waits (at most SETTLE_S) until the exchange has
    surely published its last minute, so a missing row there can be confirmed empty."""
    from backfill.rest import SETTLE_S

    wait = (end - datetime.now(UTC)).total_seconds() + SETTLE_S
    if 0 < wait <= SETTLE_S:
        sleep(wait)
        return wait
    return 0.0


def run_chunk(chunk: "Chunk | dict", *, force: bool = False, raise_on_error: bool = False,
              fetcher: RestFetcher | None = None, now: datetime | None = None,
              wait_for_settle: bool = True, purpose: str = "backfill") -> ChunkResult:
    from common.db import connect
    from common.settings import get_settings
    from backfill import store

    chunk = Chunk.from_dict(chunk)
    result = ChunkResult(chunk=chunk.to_dict(), status="failed")
    conn = connect()
    try:
        if not force and store.chunk_done(conn, chunk.exchange, chunk.symbol, chunk.start, chunk.end):
            result.status = "skipped"
            return result
        fetcher = fetcher or _fetcher(chunk.exchange, purpose)
        if wait_for_settle and now is None:
            _wait_until_settled(chunk.end)
        try:
            fetched = fetcher.fetch_minutes(chunk.symbol, chunk.start, chunk.end, now=now)
        except FetchError as e:
            result.error = str(e)
            store.record_failure(conn, chunk.exchange, chunk.symbol, chunk.start, chunk.end, result.error, 0)
            if raise_on_error:
                raise ChunkFailed(result.error) from e
            return result
        result.requests, result.retries = fetched.requests, fetched.retries
        result.rate_limit_waits = fetched.rate_limit_waits
        try:
            result.s3_key = store.archive_responses(_s3(), get_settings().s3_bucket, chunk.exchange,
                                                    chunk.symbol, chunk.start, chunk.end, fetched.responses)
        except Exception as e:  # botocore errors: the chunk is not done until its evidence is kept
            _log_chunk_error(chunk, e, "engine.archive_responses", trace=False)
            result.error = f"could not keep the REST responses in S3: {type(e).__name__}: {str(e)[:300]}"
            store.record_failure(conn, chunk.exchange, chunk.symbol, chunk.start, chunk.end, result.error,
                                 fetched.requests)
            if raise_on_error:
                raise ChunkFailed(result.error) from e
            return result
        written = store.write_chunk(conn, chunk.exchange, chunk.symbol, chunk.start, chunk.end, fetched.candles,
                                    s3_key=result.s3_key, requests=fetched.requests, record_done=fetched.complete)
        result.rows_written, result.empty_minutes = written.rows, written.empty
        result.stream_compared, result.stream_differing = written.stream_compared, written.stream_differing
        result.stream_missing = written.stream_missing
        result.status = "done" if fetched.complete else "partial"
        return result
    finally:
        conn.close()


def run_backfill(request: BackfillRequest, progress: Callable[[ChunkResult], None] | None = None, *,
                 workers: int = 4, force: bool = False, dry_run: bool = False,
                 chunks: list[Chunk] | None = None, purpose: str = "backfill") -> Summary:
    t0 = time.monotonic()
    chunks = plan_chunks(request) if chunks is None else chunks
    summary = Summary(request=request.to_dict(), dry_run=dry_run, chunks_total=len(chunks),
                      minutes=sum(c.minutes for c in chunks))
    if dry_run or not chunks:
        return summary
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(chunks))),
                            thread_name_prefix=f"backfill-{request.exchange}") as pool:
        futures = {pool.submit(run_chunk, c, force=force, purpose=purpose): c for c in chunks}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as e:  # a bug or a database error: report the chunk, keep the others going
                _log_chunk_error(futures[future], e, "engine.run_chunk", trace=True)
                result = ChunkResult(chunk=futures[future].to_dict(), status="failed",
                                     error=f"{type(e).__name__}: {str(e)[:300]}")
            summary.add(result)
            if progress is not None:
                progress(result)
    summary.elapsed_s = round(time.monotonic() - t0, 3)
    return summary


def _log_chunk_error(chunk: Chunk, error: Exception, where: str, *, trace: bool) -> None:
    """A chunk that ends `failed` on an error it caught: logged (with the traceback when it is
    a bug's) and counted (backfill.metrics), besides the reason its result and backfill_chunks keep."""
    import logging

    from backfill.metrics import count_handled

    count_handled(where, error)
    logging.getLogger("backfill.engine").error("chunk %s %s %s .. %s failed at %s: %s: %s", chunk.exchange,
                                               chunk.symbol, chunk.start, chunk.end, where, type(error).__name__,
                                               str(error)[:300], exc_info=error if trace else None)
