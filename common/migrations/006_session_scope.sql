-- The symbols a connection covers, when an extractor shards its symbols over several
-- connections (from the `connected` event's detail.symbols). NULL: everything that extractor
-- streams. Gap detection uses it to find the time a down shard left its symbols uncovered
-- while the exchange's other shards were up.
ALTER TABLE stream_sessions ADD COLUMN IF NOT EXISTS symbols text[];
