"""The loader's SQL, in one place (parameterized everywhere; COPY takes only validated text).

One batch = one transaction (streaming/loader/writer.py):
  COPY the ticks (common.codec.ticks lines) into a temp staging table; the fast path inserts them
  into `ticks` with a plain INSERT (no per-row merge: the offsets written with the rows make a
  replay impossible) and folds them into `candles_1m` once per symbol-minute and `latest_prices`
  once per symbol; a duplicate that still reaches the table (the same tick read from two sockets
  during a rotation) trips the primary key, and that batch takes the slow path instead: insert
  what is new (ON CONFLICT DO NOTHING) and fold only those rows.
"""

CREATE_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS stage_ticks (
    exchange text, symbol text, event_time_ms bigint, sequence bigint, price numeric,
    bid numeric, bid_size numeric, ask numeric, ask_size numeric, last_size numeric,
    open_24h numeric, high_24h numeric, low_24h numeric, volume_24h numeric,
    quote_volume_24h numeric, received_ns bigint
) ON COMMIT DELETE ROWS
"""

STAGE_COLUMNS = ("exchange", "symbol", "event_time_ms", "sequence", "price", "bid", "bid_size", "ask", "ask_size",
                 "last_size", "open_24h", "high_24h", "low_24h", "volume_24h", "quote_volume_24h", "received_ns")
COPY_STAGE = f"COPY stage_ticks ({', '.join(STAGE_COLUMNS)}) FROM STDIN"

_TICK_COLUMNS = """exchange, symbol, event_time, sequence, price, bid, bid_size, ask, ask_size,
                       last_size, open_24h, high_24h, low_24h, volume_24h, quote_volume_24h, received_at"""
_FROM_STAGE = """SELECT exchange, symbol, timestamptz 'epoch' + event_time_ms * interval '1 millisecond', sequence,
           price, bid, bid_size, ask, ask_size, last_size, open_24h, high_24h, low_24h, volume_24h,
           quote_volume_24h, timestamptz 'epoch' + (received_ns / 1000) * interval '1 microsecond'
    FROM stage_ticks"""

# fast path, step 1: every staged tick into `ticks` (the primary key guards against a duplicate)
INSERT_TICKS = f"INSERT INTO ticks ({_TICK_COLUMNS})\n    {_FROM_STAGE}"

# the candle and latest-price folds of the rows in `ins` (exchange, symbol, event_time, sequence, price,
# last_size). A stream candle's volume is the sum of the trade sizes its tickers carried (KuCoin
# tickers carry the last trade's size; Binance's miniTicker none: NULL) - the volume the stream alone
# saw, which reconciliation compares with the exchange's (candle_checks)
_FOLD = """), cnd AS (
    INSERT INTO candles_1m AS c (exchange, symbol, open_time, open, high, low, close, source,
                                 open_event_time, open_sequence, close_event_time, close_sequence, tick_count,
                                 volume)
    SELECT exchange, symbol, date_trunc('minute', event_time),
           (array_agg(price ORDER BY event_time, sequence))[1], max(price), min(price),
           (array_agg(price ORDER BY event_time DESC, sequence DESC))[1], 'stream',
           min(event_time), (array_agg(sequence ORDER BY event_time, sequence))[1],
           max(event_time), (array_agg(sequence ORDER BY event_time DESC, sequence DESC))[1], count(*),
           sum(last_size)    -- the volume the stream saw: the sizes of the trades its tickers carried
    FROM ins
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (exchange, symbol, open_time) DO UPDATE SET
        open = CASE WHEN (EXCLUDED.open_event_time, EXCLUDED.open_sequence)
                         < (c.open_event_time, coalesce(c.open_sequence, 0))
                    THEN EXCLUDED.open ELSE c.open END,
        open_event_time = CASE WHEN (EXCLUDED.open_event_time, EXCLUDED.open_sequence)
                                    < (c.open_event_time, coalesce(c.open_sequence, 0))
                               THEN EXCLUDED.open_event_time ELSE c.open_event_time END,
        open_sequence = CASE WHEN (EXCLUDED.open_event_time, EXCLUDED.open_sequence)
                                  < (c.open_event_time, coalesce(c.open_sequence, 0))
                             THEN EXCLUDED.open_sequence ELSE c.open_sequence END,
        close = CASE WHEN (EXCLUDED.close_event_time, EXCLUDED.close_sequence)
                          > (c.close_event_time, coalesce(c.close_sequence, 0))
                     THEN EXCLUDED.close ELSE c.close END,
        close_event_time = CASE WHEN (EXCLUDED.close_event_time, EXCLUDED.close_sequence)
                                     > (c.close_event_time, coalesce(c.close_sequence, 0))
                                THEN EXCLUDED.close_event_time ELSE c.close_event_time END,
        close_sequence = CASE WHEN (EXCLUDED.close_event_time, EXCLUDED.close_sequence)
                                   > (c.close_event_time, coalesce(c.close_sequence, 0))
                              THEN EXCLUDED.close_sequence ELSE c.close_sequence END,
        high = GREATEST(c.high, EXCLUDED.high),
        low = LEAST(c.low, EXCLUDED.low),
        tick_count = c.tick_count + EXCLUDED.tick_count,
        volume = CASE WHEN c.volume IS NULL THEN EXCLUDED.volume WHEN EXCLUDED.volume IS NULL THEN c.volume
                      ELSE c.volume + EXCLUDED.volume END,
        updated_at = now()
    WHERE c.source = 'stream'
    RETURNING 1
), lp AS (
    INSERT INTO latest_prices AS l (exchange, symbol, price, event_time)
    SELECT DISTINCT ON (exchange, symbol) exchange, symbol, price, event_time
    FROM ins
    ORDER BY exchange, symbol, event_time DESC, sequence DESC
    ON CONFLICT (exchange, symbol) DO UPDATE SET
        price = EXCLUDED.price, event_time = EXCLUDED.event_time, updated_at = now()
    WHERE EXCLUDED.event_time > l.event_time
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM cnd), (SELECT count(*) FROM lp)
"""

# fast path, step 2: fold every staged tick (all of them were inserted by step 1)
FOLD_STAGED = """
WITH ins AS (
    SELECT exchange, symbol, timestamptz 'epoch' + event_time_ms * interval '1 millisecond' AS event_time,
           sequence, price, last_size FROM stage_ticks
""" + _FOLD

# slow path: insert what is new, fold only that (RETURNING lists each new row once)
MERGE_STAGED = f"""
WITH ins AS (
    INSERT INTO ticks ({_TICK_COLUMNS})
    {_FROM_STAGE}
    ON CONFLICT DO NOTHING   -- also skips a duplicate within the batch: the first copy wins
    RETURNING exchange, symbol, event_time, sequence, price, last_size
""" + _FOLD

UPSERT_SESSIONS = """
INSERT INTO stream_sessions AS s (conn_id, exchange, connected_at, subscribed_at, last_seen_at,
                                  disconnected_at, reason, symbols, covered_until)
VALUES %s
ON CONFLICT (conn_id) DO UPDATE SET
    symbols = coalesce(s.symbols, EXCLUDED.symbols),
    covered_until = GREATEST(s.covered_until, EXCLUDED.covered_until),
    connected_at = LEAST(s.connected_at, EXCLUDED.connected_at),
    subscribed_at = LEAST(s.subscribed_at, EXCLUDED.subscribed_at),
    last_seen_at = GREATEST(s.last_seen_at, EXCLUDED.last_seen_at),
    disconnected_at = LEAST(s.disconnected_at, EXCLUDED.disconnected_at),
    reason = CASE WHEN EXCLUDED.disconnected_at IS NOT NULL
                       AND (s.disconnected_at IS NULL OR EXCLUDED.disconnected_at < s.disconnected_at)
                  THEN EXCLUDED.reason ELSE s.reason END
"""

INSERT_DEAD_LETTERS = """
INSERT INTO dlq_records (dlq_topic, dlq_partition, dlq_offset, exchange, stage, reason, source_topic,
                         source_partition, source_offset, received_at, symbols, untracked)
VALUES %s
ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING
"""
DEAD_LETTER_TEMPLATE = ("(%s, %s, %s, %s, %s, %s, %s, %s, %s, "
                         "timestamptz 'epoch' + %s * interval '1 microsecond', %s::text[], %s)")

SESSION_TEMPLATE = ("(%s, %s, timestamptz 'epoch' + %s * interval '1 microsecond', "
                     "timestamptz 'epoch' + %s * interval '1 microsecond', "
                     "timestamptz 'epoch' + %s * interval '1 microsecond', "
                     "timestamptz 'epoch' + %s * interval '1 microsecond', %s, %s::text[], "
                     "timestamptz 'epoch' + %s * interval '1 microsecond')")



# the offsets a batch covers, written with its rows (writer.TickWriter._advance_offsets): a new
# partition's row starts at the batch's first offset; the rows are locked, checked (the stored
# offset must not be past the batch's first offset: else a replay, or a zombie after a
# rebalance), then moved to the batch's next offsets
ENSURE_OFFSET_ROWS = """
INSERT INTO loader_offsets (group_id, topic, partition, next_offset)
SELECT %s, t.topic, t.partition, t.first_offset
FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS t(topic, partition, first_offset)
ON CONFLICT DO NOTHING
"""
LOCK_OFFSETS = """
SELECT topic, partition, next_offset FROM loader_offsets
WHERE group_id = %s AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))
FOR UPDATE
"""
SET_OFFSETS = """
UPDATE loader_offsets AS o SET next_offset = t.next_offset, updated_at = now()
FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS t(topic, partition, next_offset)
WHERE o.group_id = %s AND o.topic = t.topic AND o.partition = t.partition
"""

STORED_OFFSETS = """
SELECT topic, partition, next_offset FROM loader_offsets
WHERE group_id = %s AND (topic, partition) IN (SELECT * FROM unnest(%s::text[], %s::int[]))
"""

ENSURE_PARTITIONS = ("SELECT ensure_ticks_partitions(ARRAY(SELECT date '1970-01-01' + d "
                     "FROM unnest(%s::int[]) d))")
DROP_PARTITIONS = "SELECT drop_ticks_partitions_before((now() AT TIME ZONE 'UTC')::date - %s)"
