-- What crypto_stream_supervisor saw and did: one row per supervisord program per check.
CREATE TABLE supervisor_checks (
    id           bigserial   PRIMARY KEY,
    checked_at   timestamptz NOT NULL,
    run_id       text,                       -- the Airflow DAG run
    program      text        NOT NULL,       -- supervisord program name, e.g. extract-binance
    state        text        NOT NULL,       -- supervisord state seen: RUNNING, FATAL, ...
    verdict      text        NOT NULL
                 CHECK (verdict IN ('healthy', 'dead', 'stuck', 'stopped', 'transient')),
    action       text        NOT NULL DEFAULT 'none' CHECK (action IN ('none', 'restart')),
    outcome      text        CHECK (outcome IN ('recovered', 'failed')),
    state_after  text,                       -- state after a restart
    reason       text        NOT NULL,
    -- tick age and raw-topic end offset (extractors), committed offsets and lag per topic
    -- (consumers), pid, uptime: compared with at the next check to tell "stuck" from "slow"
    observed     jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX supervisor_checks_program_idx ON supervisor_checks (program, checked_at DESC);
CREATE INDEX supervisor_checks_run_idx ON supervisor_checks (run_id);
