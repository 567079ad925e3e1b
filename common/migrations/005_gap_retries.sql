-- A failed backfill is retried by the next detection runs, with backoff, unless the failure is
-- permanent (the request can never be valid: unknown market, no tracked symbol, bad parameters).
ALTER TABLE gaps
    ADD COLUMN attempts    integer     NOT NULL DEFAULT 0,
    ADD COLUMN retry_after timestamptz,
    ADD COLUMN permanent   boolean     NOT NULL DEFAULT false;
