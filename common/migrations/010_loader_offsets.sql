-- Exactly-once loads without per-row merges (issue 15): the Kafka offsets a loader batch covers
-- are written in the same Postgres transaction as its rows. A loader seeks to them when it is
-- given a partition, so a replay never reaches Postgres; a batch whose offsets were already
-- written (a zombie after a rebalance) is refused by the row's check and rolled back.
CREATE TABLE loader_offsets (
    group_id     text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
