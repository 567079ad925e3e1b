-- Cross-exchange validation (DAG crypto_cross_check, backfill/cross_check.py): a pair listed on two
-- exchanges whose 1-minute closes differed by more than the threshold for several minutes in a
-- row. One row per divergence window; a re-run over the same minutes merges into the same row.
CREATE TABLE price_divergences (
    id            bigserial   PRIMARY KEY,
    symbol        text        NOT NULL,          -- canonical BASE-QUOTE
    exchange_a    text        NOT NULL,          -- the two exchanges, in name order
    exchange_b    text        NOT NULL,
    window_start  timestamptz NOT NULL,          -- first diverging minute
    window_end    timestamptz NOT NULL,          -- exclusive: the minute after the last one
    minutes       integer     NOT NULL,
    max_bps       numeric     NOT NULL,          -- largest |close_a - close_b| / mid, basis points
    max_at        timestamptz NOT NULL,          -- the minute of the largest difference
    close_a       numeric     NOT NULL,          -- both closes at that minute
    close_b       numeric     NOT NULL,
    threshold_bps numeric     NOT NULL,
    detected_at   timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (exchange_a < exchange_b),
    CHECK (window_end > window_start)
);
CREATE UNIQUE INDEX price_divergences_identity_idx ON price_divergences (symbol, exchange_a, exchange_b, window_start);
CREATE INDEX price_divergences_recent_idx ON price_divergences (window_end DESC);
