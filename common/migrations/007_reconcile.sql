-- Reconciliation (owner: backfill/reconcile.py): every closed minute ends up as the exchange's own
-- candle. `reconcile_state` records how far each exchange is reconciled; `candle_checks` what the
-- stream's candles (built from tickers) missed, per exchange and minute.

CREATE TABLE reconcile_state (
    exchange          text        PRIMARY KEY,
    -- every minute before this one (exclusive end) was reconciled, from `started_at` on
    reconciled_until  timestamptz NOT NULL,
    started_at        timestamptz NOT NULL,      -- the first minute the first run reconciled
    updated_at        timestamptz NOT NULL DEFAULT now(),
    last_run          jsonb       NOT NULL DEFAULT '{}'::jsonb,   -- the last run's figures
    CHECK (date_trunc('minute', reconciled_until) = reconciled_until)
);

-- One row per (exchange, minute) in which a REST candle replaced what the stream had stored, or
-- found a trade the stream had no candle for. Rows are added to (never replaced) by every chunk
-- that writes the minute, in the chunk's own transaction, so each stream candle counts once.
CREATE TABLE candle_checks (
    exchange            text        NOT NULL,
    minute              timestamptz NOT NULL,
    symbols_compared    integer     NOT NULL DEFAULT 0,   -- stream candles held against the REST candle
    symbols_differing   integer     NOT NULL DEFAULT 0,   -- of those: open, high, low, close or volume differed
    symbols_missing     integer     NOT NULL DEFAULT 0,   -- traded (REST), but the stream stored no candle
    -- largest |stream - rest| / rest over the compared symbols (NULL: nothing to compare)
    max_open_rel_diff   numeric,
    max_high_rel_diff   numeric,
    max_low_rel_diff    numeric,
    max_close_rel_diff  numeric,
    max_volume_rel_diff numeric,                          -- NULL while stream candles carry no volume
    first_checked_at    timestamptz NOT NULL DEFAULT now(),
    checked_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, minute),
    CHECK (date_trunc('minute', minute) = minute),
    CHECK (symbols_differing <= symbols_compared AND symbols_missing >= 0)
);
