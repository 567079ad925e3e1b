"""Where backfill writes: `candles_1m` (source 'rest'), `backfill_chunks`, and S3 `backfill/`.

- `write_chunk(conn, exchange, symbol, start, end, candles, *, s3_key, requests, record_done)`:
  one transaction: upsert the candles, and (if record_done) mark the chunk done. Returns
  (rows_written, empty_minutes). A REST candle replaces whatever is stored for the minute
  (a 'stream' candle, an older REST answer); an identical REST row is left untouched, so a
  re-run writes nothing.
- `chunk_done(conn, exchange, symbol, start, end) -> bool`: a finished chunk covers [start, end).
- `archive_responses(s3, ...)`: the raw REST responses of a chunk, gzip JSON, at
  `common.s3.backfill_response_key(exchange, symbol, '1m', start, end)`; a re-run overwrites
  the same key.
"""
from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone

from psycopg2.extras import execute_values

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


def write_chunk(conn, exchange: str, symbol: str, start: datetime, end: datetime,
                candles: list[MinuteCandle], *, s3_key: str | None, requests: int,
                record_done: bool) -> tuple[int, int]:
    empty = sum(1 for c in candles if c.confirmed_empty)
    with conn, conn.cursor() as cur:
        written = upsert_candles(cur, exchange, symbol, candles)
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
    return written, empty


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
