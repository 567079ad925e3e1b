"""Where backfill writes: `candles_1m` (source 'rest'), `backfill_chunks`, and S3 `backfill/`.

- `write_chunk(conn, exchange, symbol, start, end, candles, *, s3_key, requests, record_done)`:
  one transaction: lock what is stored for the chunk's minutes, upsert the candles, add what
  they say about the replaced stream candles to `candle_checks` (backfill.checks), and (if
  record_done) mark the chunk done. Returns a `Written`. A REST candle replaces whatever is
  stored for the minute (a 'stream' candle, an older REST answer); an identical REST row is
  left untouched, so a re-run writes nothing (and checks nothing: a replaced stream candle is
  counted once).
- `chunk_done(conn, exchange, symbol, start, end) -> bool`: a finished chunk covers [start, end).
- `archive_responses(s3, ...)`: the raw REST responses of a chunk, gzip JSON, at
  `common.s3.backfill_response_key(exchange, symbol, '1m', start, end)`; a re-run overwrites
  the same key.
"""
from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from typing import NamedTuple

from psycopg2.extras import execute_values

from backfill import checks
from backfill.rest import MinuteCandle, RawResponse
from common.s3 import backfill_response_key

UTC = timezone.utc

_UPSERT = """
INSERT INTO candles_1m AS c (exchange, symbol, open_time, open, high, low, close, volume, source,
                             confirmed_empty, tick_count, updated_at)
VALUES %s
ON CONFLICT (exchange, symbol, open_time) DO UPDATE SET
    open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, close = EXCLUDED.close,
    volume = EXCLUDED.volume, source = 'rest', confirmed_empty = EXCLUDED.confirmed_empty,
    updated_at = now()
WHERE c.source <> 'rest'
   OR c.confirmed_empty IS DISTINCT FROM EXCLUDED.confirmed_empty
   OR (c.open, c.high, c.low, c.close, c.volume)
      IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.volume)
RETURNING 1
"""


def upsert_candles(cur, exchange: str, symbol: str, candles: list[MinuteCandle]) -> int:
    """Upsert REST candles; returns how many rows were inserted or changed."""
    if not candles:
        return 0
    rows = [(exchange, symbol, c.open_time, c.open, c.high, c.low, c.close, c.volume, "rest",
             c.confirmed_empty, 0, datetime.now(UTC)) for c in candles]
    written = execute_values(cur, _UPSERT, rows, page_size=1000, fetch=True)
    return len(written)


def chunk_done(conn, exchange: str, symbol: str, start: datetime, end: datetime) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM backfill_chunks WHERE exchange = %s AND symbol = %s AND status = 'done' "
                    "AND chunk_start <= %s AND chunk_end >= %s LIMIT 1", (exchange, symbol, start, end))
        return cur.fetchone() is not None


class Written(NamedTuple):
    rows: int                  # candles inserted or changed
    empty: int                 # minutes confirmed empty
    stream_compared: int       # stream candles replaced and held against the exchange's
    stream_differing: int      # of those, different from the exchange's
    stream_missing: int        # minutes the exchange traded in and the stream stored nothing for


def _stored_for_update(cur, exchange: str, symbol: str, start: datetime, end: datetime) -> dict:
    """{open_time: (open, high, low, close, volume, source)} of [start, end), locked (minute
    order, as the loader locks) so that no tick changes a stream candle between check and write."""
    cur.execute("SELECT open_time, open, high, low, close, volume, source FROM candles_1m "
                "WHERE exchange = %s AND symbol = %s AND open_time >= %s AND open_time < %s "
                "ORDER BY open_time FOR UPDATE", (exchange, symbol, start, end))
    return {r[0]: r[1:] for r in cur.fetchall()}


def write_chunk(conn, exchange: str, symbol: str, start: datetime, end: datetime,
                candles: list[MinuteCandle], *, s3_key: str | None, requests: int,
                record_done: bool) -> Written:
    empty = sum(1 for c in candles if c.confirmed_empty)
    with conn, conn.cursor() as cur:
        stored = _stored_for_update(cur, exchange, symbol, start, end)
        found = checks.minute_checks(stored, candles, stream_since=checks.stream_since(cur, exchange))
        written = upsert_candles(cur, exchange, symbol, candles)
        checks.record(cur, exchange, found)
        if record_done:
            cur.execute("""
                INSERT INTO backfill_chunks (exchange, symbol, chunk_start, chunk_end, status, rows_written,
                                             empty_minutes, requests, s3_key, error, updated_at)
                VALUES (%s, %s, %s, %s, 'done', %s, %s, %s, %s, NULL, now())
                ON CONFLICT (exchange, symbol, chunk_start, chunk_end) DO UPDATE SET
                    status = 'done', rows_written = backfill_chunks.rows_written + EXCLUDED.rows_written,
                    empty_minutes = EXCLUDED.empty_minutes, requests = backfill_chunks.requests + EXCLUDED.requests,
                    s3_key = EXCLUDED.s3_key, error = NULL, updated_at = now()""",
                        (exchange, symbol, start, end, written, empty, requests, s3_key))
    return Written(written, empty, sum(c.compared for c in found), sum(c.differing for c in found),
                   sum(c.missing for c in found))


def record_failure(conn, exchange: str, symbol: str, start: datetime, end: datetime, error: str,
                   requests: int) -> None:
    """Keep the reason a chunk failed (never overwrites a done chunk)."""
    with conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO backfill_chunks (exchange, symbol, chunk_start, chunk_end, status, requests, error, updated_at)
            VALUES (%s, %s, %s, %s, 'failed', %s, %s, now())
            ON CONFLICT (exchange, symbol, chunk_start, chunk_end) DO UPDATE SET
                requests = backfill_chunks.requests + EXCLUDED.requests, error = EXCLUDED.error, updated_at = now()
            WHERE backfill_chunks.status <> 'done'""",
                    (exchange, symbol, start, end, requests, error[:2000]))


def archive_responses(s3, bucket: str, exchange: str, symbol: str, start: datetime, end: datetime,
                      responses: list[RawResponse]) -> str:
    key = backfill_response_key(exchange, symbol, "1m", start, end)
    doc = {"exchange": exchange, "symbol": symbol, "interval": "1m",
           "start": start.isoformat(), "end": end.isoformat(),
           "responses": [r.to_dict() for r in responses]}
    body = gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), mtime=0)
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                  ContentEncoding="gzip")
    return key
