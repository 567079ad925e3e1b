-- The tables of DESIGN.md. Numbers are numeric, times timestamptz (UTC).

CREATE TABLE ticks (
    exchange          text        NOT NULL,
    symbol            text        NOT NULL,
    event_time        timestamptz NOT NULL,
    sequence          bigint      NOT NULL DEFAULT 0,
    price             numeric     NOT NULL,
    bid               numeric,
    bid_size          numeric,
    ask               numeric,
    ask_size          numeric,
    last_size         numeric,
    open_24h          numeric,
    high_24h          numeric,
    low_24h           numeric,
    volume_24h        numeric,
    quote_volume_24h  numeric,
    received_at       timestamptz NOT NULL,
    ingested_at       timestamptz NOT NULL DEFAULT now(),
    -- a replayed tick (same exchange, symbol, exchange time and sequence) adds no row
    PRIMARY KEY (exchange, symbol, event_time, sequence)
) PARTITION BY RANGE (event_time);

-- "a symbol over a time range" and "newest ticks of a symbol" both walk the primary key
-- (forwards or backwards); exchange-wide silence detection needs time first:
CREATE INDEX ticks_exchange_time_idx ON ticks (exchange, event_time);

-- Daily partitions, created on demand by the loader and dropped by retention.
CREATE FUNCTION ensure_ticks_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := format('ticks_%s', to_char(day, 'YYYYMMDD'));
BEGIN
    IF to_regclass(part) IS NULL THEN
        EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF ticks FOR VALUES FROM (%L) TO (%L)',
                       part, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    END IF;
    RETURN part;
END $$;

CREATE FUNCTION drop_ticks_partitions_before(cutoff date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN SELECT c.relname FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = 'ticks' AND c.relname ~ '^ticks_[0-9]{8}$'
               AND to_date(substr(c.relname, 7), 'YYYYMMDD') < cutoff
    LOOP
        EXECUTE format('DROP TABLE %I', r.relname);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

CREATE TABLE latest_prices (
    exchange    text        NOT NULL,
    symbol      text        NOT NULL,
    price       numeric     NOT NULL,
    event_time  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol)
);

CREATE TABLE candles_1m (
    exchange         text        NOT NULL,
    symbol           text        NOT NULL,
    open_time        timestamptz NOT NULL,
    open             numeric,
    high             numeric,
    low              numeric,
    close            numeric,
    volume           numeric,
    source           text        NOT NULL CHECK (source IN ('stream', 'rest')),
    -- the exchange confirmed no trade in this minute (KuCoin: no row; Binance: zero volume)
    confirmed_empty  boolean     NOT NULL DEFAULT false,
    -- for stream candles: the event times of the ticks that set open and close, so that
    -- batches merge correctly in any order
    open_event_time  timestamptz,
    close_event_time timestamptz,
    tick_count       bigint      NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exchange, symbol, open_time),
    CHECK (date_trunc('minute', open_time) = open_time)
);
CREATE INDEX candles_1m_time_idx ON candles_1m (exchange, open_time);

CREATE TABLE stream_sessions (
    conn_id          text        PRIMARY KEY,
    exchange         text        NOT NULL,
    connected_at     timestamptz NOT NULL,
    subscribed_at    timestamptz,
    last_seen_at     timestamptz NOT NULL,
    disconnected_at  timestamptz,
    reason           text
);
CREATE INDEX stream_sessions_exchange_idx ON stream_sessions (exchange, connected_at);

CREATE TABLE gaps (
    id           bigserial   PRIMARY KEY,
    exchange     text        NOT NULL,
    symbol       text,                       -- NULL: every tracked symbol of the exchange
    gap_start    timestamptz NOT NULL,
    gap_end      timestamptz NOT NULL,       -- exclusive
    status       text        NOT NULL DEFAULT 'open'
                 CHECK (status IN ('open', 'backfilling', 'filled', 'failed')),
    kind         text,                       -- uncovered | silence | missing_candles | manual
    detected_at  timestamptz NOT NULL DEFAULT now(),
    filled_at    timestamptz,
    rows_filled  bigint,
    error        text,
    CHECK (gap_end > gap_start)
);
CREATE UNIQUE INDEX gaps_identity_idx ON gaps (exchange, coalesce(symbol, '*'), gap_start, gap_end);
