-- Every loss path becomes a gap (issue 14).

-- Dead letters, read back from the *_dlq topics by the loader (one row per dead-letter record,
-- keyed by its own coordinates, so a replay adds nothing). Gap detection turns the minutes of the
-- data they held into gaps: a frame that never became ticks leaves its minute's stream candle
-- incomplete.
CREATE TABLE dlq_records (
    dlq_topic        text        NOT NULL,
    dlq_partition    integer     NOT NULL,
    dlq_offset       bigint      NOT NULL,
    exchange         text        NOT NULL,
    stage            text        NOT NULL,          -- transform | load | unknown
    reason           text        NOT NULL,
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    received_at      timestamptz NOT NULL,          -- when our extractor read the data (or the DLQ took it)
    symbols          text[],                        -- whose data it held; NULL = unknown (exchange-wide)
    untracked        boolean     NOT NULL DEFAULT false,   -- only markets we do not track: no gap
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX dlq_records_time_idx ON dlq_records (exchange, received_at);

-- How far a connection's data is known to be safe (read and in Kafka or the extractor's spool),
-- minus the exchange's push delay: the end of its coverage is judged by what the extractor read,
-- not by when it noticed the socket was gone.
ALTER TABLE stream_sessions ADD COLUMN covered_until timestamptz;
