-- Durable runs, version 1 (PostgreSQL). One statement per ";"-terminated line group.
CREATE TABLE runs (
    run_id           TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    agent_type       TEXT NOT NULL,
    input_policy     TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    labels           TEXT NOT NULL,
    status           TEXT NOT NULL,
    last_seq         BIGINT NOT NULL,
    last_hash        TEXT NOT NULL,
    retention_floor  BIGINT NOT NULL,
    floor_prev_hash  TEXT NOT NULL,
    executor_token   BIGINT NOT NULL,
    executor_node    TEXT NOT NULL,
    executor_lease   BIGINT NOT NULL,
    cancel_requested BOOLEAN NOT NULL,
    frames           BIGINT NOT NULL,
    frames_pending   BIGINT NOT NULL,
    steps            BIGINT NOT NULL,
    recoveries       BIGINT NOT NULL,
    checkpoints      BIGINT NOT NULL,
    emitted          BIGINT NOT NULL,
    error_class      TEXT NOT NULL,
    error_message    TEXT NOT NULL,
    output           TEXT NOT NULL,
    created_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL
);
-- ListRuns: a tenant's runs newest first, optionally by status or agent type.
CREATE INDEX runs_by_tenant ON runs (tenant, created_ms DESC, run_id DESC);
-- The janitor's sweep: only runs that have not ended.
CREATE INDEX runs_active ON runs (status) WHERE status IN ('pending', 'running');
-- Idempotency of frames: one row per (run_id, frame_id).
CREATE TABLE frames (
    run_id         TEXT NOT NULL,
    frame_id       TEXT NOT NULL,
    type           TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    PRIMARY KEY (run_id, frame_id)
);
-- The log: a tail read is one range scan of the primary key (run_id, seq).
CREATE TABLE events (
    run_id         TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    type           TEXT NOT NULL,
    version        INTEGER NOT NULL,
    time_ms        BIGINT NOT NULL,
    payload        TEXT,
    payload_sha256 TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE checkpoints (
    run_id  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    state   TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
