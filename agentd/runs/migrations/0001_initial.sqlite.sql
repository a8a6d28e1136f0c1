-- Durable runs, version 1 (SQLite). One statement per ";"-terminated line group.
CREATE TABLE runs (
    run_id           TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    agent_type       TEXT NOT NULL,
    input_policy     TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    labels           TEXT NOT NULL,
    status           TEXT NOT NULL,
    last_seq         INTEGER NOT NULL,
    last_hash        TEXT NOT NULL,
    retention_floor  INTEGER NOT NULL,
    floor_prev_hash  TEXT NOT NULL,
    executor_token   INTEGER NOT NULL,
    executor_node    TEXT NOT NULL,
    executor_lease   INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL,
    frames           INTEGER NOT NULL,
    frames_pending   INTEGER NOT NULL,
    steps            INTEGER NOT NULL,
    recoveries       INTEGER NOT NULL,
    checkpoints      INTEGER NOT NULL,
    emitted          INTEGER NOT NULL,
    error_class      TEXT NOT NULL,
    error_message    TEXT NOT NULL,
    output           TEXT NOT NULL,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL
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
    seq            INTEGER NOT NULL,
    PRIMARY KEY (run_id, frame_id)
) WITHOUT ROWID;
-- The log: clustered by (run_id, seq), so a tail read is one range scan.
CREATE TABLE events (
    run_id         TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    type           TEXT NOT NULL,
    version        INTEGER NOT NULL,
    time_ms        INTEGER NOT NULL,
    payload        TEXT,
    payload_sha256 TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
    run_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    state   TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
