-- Durable runs, version 2 (PostgreSQL): the seq of a run's run.cancel_requested event, so a CancelRun
-- replay answers with it (0: no cancellation requested). Runs canceled before are filled from their log
-- (0 if retention already removed the event).
ALTER TABLE runs ADD COLUMN cancel_seq BIGINT NOT NULL DEFAULT 0;
UPDATE runs SET cancel_seq = COALESCE((SELECT min(seq) FROM events WHERE events.run_id = runs.run_id AND events.type = 'run.cancel_requested'), 0) WHERE cancel_requested;
