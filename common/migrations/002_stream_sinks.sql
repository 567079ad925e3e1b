-- Loader support (issue 5): total order of stream ticks inside a candle, and race-free
-- creation of daily ticks partitions by concurrent loaders.

-- Ticks are unique per (exchange, symbol, event_time, sequence): the candle keeps the sequence
-- of the ticks that set open and close, so merging batches in any order picks the same ticks.
ALTER TABLE candles_1m
    ADD COLUMN open_sequence  bigint,
    ADD COLUMN close_sequence bigint;

-- Create the daily partitions for `days` (if missing), serialized by a transaction-scoped
-- advisory lock so that two loaders creating the same day do not collide in the catalog.
CREATE FUNCTION ensure_ticks_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    n integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(727275);
    FOREACH d IN ARRAY days LOOP
        IF to_regclass(format('ticks_%s', to_char(d, 'YYYYMMDD'))) IS NULL THEN
            PERFORM ensure_ticks_partition(d);
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END $$;
