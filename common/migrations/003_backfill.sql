-- Backfill bookkeeping (owner: backfill/). Resumability: one row per finished REST chunk.

CREATE TABLE backfill_chunks (
    exchange      text        NOT NULL,
    symbol        text        NOT NULL,
    chunk_start   timestamptz NOT NULL,
    chunk_end     timestamptz NOT NULL,      -- exclusive
    status        text        NOT NULL CHECK (status IN ('done', 'failed')),
    rows_written  bigint      NOT NULL DEFAULT 0,   -- candles inserted or replaced
    empty_minutes bigint      NOT NULL DEFAULT 0,   -- minutes recorded as confirmed-empty
    requests      integer     NOT NULL DEFAULT 0,
    s3_key        text,
    error         text,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol, chunk_start, chunk_end),
    CHECK (chunk_end > chunk_start)
);
-- "is [a, b) already done for this symbol?" looks up done chunks by symbol and start
CREATE INDEX backfill_chunks_done_idx ON backfill_chunks (exchange, symbol, chunk_start) WHERE status = 'done';

-- Gap lookups by status (the scheduler asks for open gaps every 15 minutes).
CREATE INDEX gaps_status_idx ON gaps (status, exchange, gap_start);
