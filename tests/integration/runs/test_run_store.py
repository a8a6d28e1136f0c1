"""The runs store on real SQLite and real PostgreSQL: the same contract, transaction by transaction."""

from __future__ import annotations

import asyncio

import pytest

from agentd.runs.model import (
    ExecutorFenced,
    FrameConflict,
    NewEvent,
    RunConflict,
    RunNotFound,
    RunSpec,
    StaleCursor,
    canonical_json,
)
from agentd.runs.retention import RetentionPolicy
from agentd.runs.store import migrations, open_store
from mabeam.runchain import Link, verify

NOW = 1_700_000_000_000


def spec(run_id: str = "r1", **kw) -> RunSpec:  # type: ignore[no-untyped-def]
    fields = {"run_id": run_id, "tenant": "default", "agent_type": "worker", "input_policy": "enqueue",
              "labels": {"k": "v"}, "input": canonical_json({"task": 1})}
    fields.update(kw)
    return RunSpec(**fields)


@pytest.fixture
async def store(runs_store_url):
    store = open_store(runs_store_url)
    await store.open()
    yield store
    await store.close()


async def test_migrations_exist_for_both_dialects_and_apply_once(store, runs_store_url):
    assert [m.version for m in migrations("sqlite")] == [m.version for m in migrations("postgres")] == [1, 2]
    again = open_store(runs_store_url)
    await again.open()  # a second agentd opening the same store applies nothing twice
    await again.close()


async def test_start_is_idempotent_and_conflicts_on_a_different_request(store):
    first = await store.start(spec(), NOW)
    assert first.created
    again = await store.start(spec(), NOW + 1)
    assert again.duplicate and again.row == first.row
    with pytest.raises(RunConflict):
        await store.start(spec(agent_type="other"), NOW)
    run = await store.get("r1")
    assert run is not None and run.labels_dict() == {"k": "v"} and run.last_seq == 2


async def test_concurrent_starts_of_one_id_create_it_once(store):
    plans = await asyncio.gather(*(store.start(spec("same"), NOW) for _ in range(8)))
    assert sum(p.created for p in plans) == 1
    run = await store.get("same")
    assert run is not None and run.last_seq == 2


async def test_frames_dedupe_by_id(store):
    await store.start(spec(), NOW)
    accepted = await store.append_frame("r1", "f1", "msg", '{"a":1}', NOW)
    assert not accepted.duplicate and accepted.seq == 3
    replay = await store.append_frame("r1", "f1", "msg", '{"a":1}', NOW)
    assert replay.duplicate and replay.seq == 3
    with pytest.raises(FrameConflict):
        await store.append_frame("r1", "f1", "msg", '{"a":2}', NOW)
    with pytest.raises(RunNotFound):
        await store.append_frame("missing", "f1", "msg", "1", NOW)
    _, events = await store.read("r1", 0)
    assert [e.type for e in events] == ["run.started", "frame.received", "frame.received"]


async def test_concurrent_appends_get_gap_free_seqs(store):
    await store.start(spec(input=None), NOW)
    await asyncio.gather(*(store.append_frame("r1", f"f{i}", "msg", str(i), NOW) for i in range(40)))
    _, events = await store.read("r1", 0)
    assert [e.seq for e in events] == list(range(1, 42))
    links = [Link(e.seq, e.type, e.version, e.payload, e.payload_sha256, e.prev_hash, e.hash) for e in events]
    assert verify("r1", links).ok


async def test_a_deposed_executor_cannot_append(store):
    await store.start(spec(), NOW)
    await store.claim("r1", 10, "node-1", 1, NOW, 3)
    await store.append("r1", 10, [NewEvent("progress", "1")], NOW)
    await store.claim("r1", 20, "node-2", 2, NOW, 3)
    with pytest.raises(ExecutorFenced):
        await store.append("r1", 10, [NewEvent("progress", "2")], NOW)
    with pytest.raises(ExecutorFenced):
        await store.claim("r1", 15, "node-3", 3, NOW, 3)
    run = await store.get("r1")
    assert run is not None and run.executor_node == "node-2" and run.recoveries == 1


async def test_read_pages_and_the_commit_hook(store):
    seen: list[tuple[str, int]] = []
    store.on_commit = lambda row, events: seen.append((row.run_id, events[-1].seq))
    await store.start(spec(input=None), NOW)
    await store.claim("r1", 1, "n", 1, NOW, 3)
    await store.append("r1", 1, [NewEvent("progress", str(i)) for i in range(10)], NOW, checkpoint='{"n":10}')
    run, page = await store.read("r1", 3, limit=4)
    assert [e.seq for e in page] == [4, 5, 6, 7] and run.last_seq == 13
    assert seen[-1] == ("r1", 13)
    checkpoint = await store.latest_checkpoint("r1")
    assert checkpoint is not None and checkpoint.seq == 13 and checkpoint.state == '{"n":10}'


async def test_list_runs_pages_newest_first(store):
    for i in range(5):
        await store.start(spec(f"run-{i}", input=None), NOW + i)
    await store.start(spec("other-tenant", tenant="t2", input=None), NOW)
    first = await store.list_runs("default", "", "", 3, None)
    assert [r.run_id for r in first] == ["run-4", "run-3", "run-2"]
    rest = await store.list_runs("default", "", "", 3, (first[-1].created_ms, first[-1].run_id))
    assert [r.run_id for r in rest] == ["run-1", "run-0"]
    assert [r.run_id for r in await store.list_runs("default", "", "running", 10, None)] == []
    assert len(await store.active_runs()) == 6


async def test_retention_moves_the_floor_and_a_stale_cursor_is_refused(store):
    await store.start(spec(input=None), NOW)
    await store.claim("r1", 1, "n", 1, NOW, 3)
    await store.append("r1", 1, [NewEvent("model.delta", str(i)) for i in range(5)], NOW, checkpoint="{}")
    await store.append("r1", 1, [NewEvent("progress", "after")], NOW)
    plan = await store.retain("r1", RetentionPolicy({"model.*": 0.0}, history_ttl_s=0.0), NOW + 1000)
    assert plan.floor == 9  # everything up to the checkpoint (seq 8)
    run = await store.get("r1")
    assert run is not None and run.retention_floor == 9
    with pytest.raises(StaleCursor) as raised:
        await store.read("r1", 2)
    assert raised.value.metadata["retention_floor"] == "9"
    _, events = await store.read("r1", 8)
    assert [e.seq for e in events] == [9]
    links = [Link(e.seq, e.type, e.version, e.payload, e.payload_sha256, e.prev_hash, e.hash) for e in events]
    assert verify("r1", links, first_seq=9, start_prev_hash=run.floor_prev_hash).ok
    # The next append answers with the row as it is now: the floor retention raised, not the one before it.
    after = await store.append("r1", 1, [NewEvent("progress", "later")], NOW + 2000)
    assert after.row.retention_floor == 9 and after.row.floor_prev_hash == run.floor_prev_hash


async def test_appends_of_one_a_few_and_many_events_chain_alike(store):
    await store.start(spec("sizes", input=None), NOW)
    await store.claim("sizes", 1, "n", 1, NOW, 3)
    for size in (1, 2, 16, 64, 65, 300):  # SQLite: one row, multi-row INSERTs, and executemany past 64
        await store.append("sizes", 1, [NewEvent("note", canonical_json({"size": size, "i": i})) for i in range(size)],
                           NOW)
    run, events = await store.read("sizes", 0, limit=1000)
    assert run.last_seq == 2 + 448 == len(events) and [e.seq for e in events] == list(range(1, 451))
    assert [e.payload_value() for e in events[2:5]] == [{"size": 1, "i": 0}, {"size": 2, "i": 0}, {"size": 2, "i": 1}]
    links = [Link(e.seq, e.type, e.version, e.payload, e.payload_sha256, e.prev_hash, e.hash) for e in events]
    assert verify("sizes", links).ok and run.last_hash == events[-1].hash and run.emitted == 448


async def test_sqlite_checkpoints_off_the_append_path_and_folds_the_wal_back(tmp_path, monkeypatch):
    import sqlite3

    from agentd.runs import sqlite as backend

    # A checkpoint every 4 commits, so 200 commits start many of them.
    monkeypatch.setattr(backend, "CHECKPOINT_EVERY", 4)
    path = tmp_path / "runs.sqlite"
    store = open_store(f"sqlite://{path}")
    await store.open()
    try:
        await store.start(spec("wal"), NOW)
        await store.claim("wal", 1, "n1", 1, NOW, 3)
        started = set()
        for i in range(200):
            await store.append("wal", 1, [NewEvent("note", canonical_json({"i": i, "pad": "x" * 500}))], NOW)
            if store._checkpointing is not None:
                started.add(store._checkpointing)
                # Wait for it here only to make the WAL's length deterministic: the append did not wait for it.
                await asyncio.wrap_future(store._checkpointing)
        assert len(started) >= 40
        probe = sqlite3.connect(path)
        try:
            # A PASSIVE checkpoint reports the WAL's length in frames: 200 commits wrote at least 400 frames
            # (the run's row and an events page each), so a short, fully folded log means the store's
            # checkpoints folded the WAL back and writers restarted it (autocheckpoint is off on its connections).
            busy, frames, done = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert busy == 0 and frames == done and frames < 40, (busy, frames, done)
        finally:
            probe.close()
        run, events = await store.read("wal", 0)
        assert run.last_seq == 203 and [e.seq for e in events] == list(range(1, 204))
    finally:
        await store.close()


async def test_sqlite_wal_restart_waits_for_no_reader_and_resets_once_it_is_gone(tmp_path, monkeypatch):
    import sqlite3

    from agentd.runs import sqlite as backend

    monkeypatch.setattr(backend, "CHECKPOINT_EVERY", 4)
    monkeypatch.setattr(backend, "WAL_MAX_FRAMES", 40)
    monkeypatch.setattr(backend, "RESTART_WAIT_MS", 20)
    path = tmp_path / "runs.sqlite"
    store = open_store(f"sqlite://{path}")
    await store.open()
    reader = sqlite3.connect(path, isolation_level=None)
    probe = sqlite3.connect(path, isolation_level=None)

    async def append_some(start: int, count: int) -> None:
        for i in range(start, start + count):
            await store.append("held", 1, [NewEvent("note", canonical_json({"i": i, "pad": "x" * 500}))], NOW)
            if store._checkpointing is not None:
                await asyncio.wrap_future(store._checkpointing)  # deterministic WAL length (see the test above)

    try:
        await store.start(spec("held"), NOW)
        await store.claim("held", 1, "n1", 1, NOW, 3)
        # A reader on an old snapshot (a sqlite3 shell left open, say): no checkpoint can fold the WAL past it.
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events WHERE run_id = 'held'").fetchone()[0] == 3
        await append_some(0, 100)
        # The appends went on (the RESTART gave up after RESTART_WAIT_MS each time) and the WAL kept growing.
        _, frames, _ = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames >= 200
        assert reader.execute("SELECT count(*) FROM events WHERE run_id = 'held'").fetchone()[0] == 3
        reader.execute("COMMIT")
        await append_some(100, 12)  # the next checkpoints fold it back and a writer restarts it
        _, frames, done = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames == done and frames < 60, (frames, done)
        run, events = await store.read("held", 0, limit=500)
        assert run.last_seq == 115 and [e.seq for e in events] == list(range(1, 116))
    finally:
        reader.close()
        probe.close()
        await store.close()


async def test_migration_2_fills_the_cancel_seq_of_runs_canceled_before_it(tmp_path):
    import sqlite3

    path = tmp_path / "runs.sqlite"
    store = open_store(f"sqlite://{path}")
    await store.open()
    await store.start(spec("old", input=None), NOW)
    first = await store.cancel("old", "stop", NOW)
    await store.close()
    # The file as an agentd before migration 2 left it: no cancel_seq column, version 2 not applied.
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("ALTER TABLE runs DROP COLUMN cancel_seq")
    db.execute("DELETE FROM schema_migrations WHERE version = 2")
    db.close()
    store = open_store(f"sqlite://{path}")
    await store.open()
    try:
        again = await store.cancel("old", "again", NOW)
        assert again.duplicate and again.seq == first.seq == 2
    finally:
        await store.close()
