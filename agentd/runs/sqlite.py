"""The SQLite runs store: one file in WAL mode, shared by every agentd of a host.

Why the standard library's ``sqlite3`` on threads of our own rather than aiosqlite:
aiosqlite is the same thing (a thread per connection and a queue) behind a wider
API; owning the two threads lets a whole read-plan-write transaction run in one
hop to the writer thread, and keeps one dependency fewer. Writes go through one
connection on one thread (``BEGIN IMMEDIATE``: the write lock is taken up front, so
agentd processes sharing the file queue on ``busy_timeout`` instead of failing on
a lock upgrade); reads use a second connection on another thread, so a stream's
tail read never waits behind a write (WAL gives readers a snapshot).

Likewise a transaction runs on the event loop, on that connection, when the writer
thread has nothing outstanding and the write lock is free at once (another agentd
writing: the writer thread waits for it as before). A commit in WAL mode with
``synchronous=NORMAL`` is a write to the WAL, no fsync.

Checkpoints (folding the WAL back into the database file, which syncs both files)
run on a thread of their own, never on the way of a commit: SQLite's automatic
checkpoint is off on every connection (``wal_autocheckpoint=0``) and the store
starts a ``PASSIVE`` checkpoint, which neither waits for nor blocks writers, after
every :data:`CHECKPOINT_EVERY` commits, one at a time. Inline, the commit that
crossed SQLite's 1000-page threshold paid two fsyncs (4-13 ms here) and those
stalls were 40% of an append's mean time (``python -m bench runs``). A passive
checkpoint cannot reset a WAL that writers keep extending, so once the WAL holds
more than :data:`WAL_MAX_FRAMES` frames the checkpointer runs a ``RESTART``
checkpoint, which waits for the writer of the moment and holds writers off while
it finishes: the WAL stays bounded under sustained appends. It waits at most
:data:`RESTART_WAIT_MS` for readers on an old snapshot, then tries again at the
next checkpoint.

A tail read of at most :data:`INLINE_EVENTS` events (a follower woken by a commit,
an executor reading what it just appended) runs on the event loop itself, on a
third connection that never waits for a lock (``busy_timeout=0``: a busy answer
sends the read to the reader thread as before). A few rows from pages the commit
just wrote cost less than the two thread switches of the hop, and on this busy
two-core machine each switch can wait a scheduler tick (``python -m bench runs``,
stream_delivery_cross_node: the woken node's read was ~1.5 ms of its ~6 ms).

``synchronous=NORMAL`` in WAL mode: a commit survives the process being killed
(kill -9), not a power cut; use PostgreSQL when that matters.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Any

from agentd.runs.model import (
    CHECKPOINT_COLUMNS,
    EVENT_COLUMNS,
    FRAME_COLUMNS,
    RUN_COLUMNS,
    CheckpointRow,
    EventRow,
    FrameRow,
    RunError,
    RunRow,
    RunsUnavailable,
)
from agentd.runs.retention import RetentionPlan
from agentd.runs.state import Plan
from agentd.runs.store import Planner, RunStore, migrations

log = logging.getLogger(__name__)

_RUN_SELECT = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
_RUN_INSERT = f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
_EVENT_INSERT = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
_EVENT_SELECT = (f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE run_id = ? AND seq > ? "
                 "ORDER BY seq LIMIT ?")
#: A batch of at most this many events is inserted by one multi-row INSERT (one statement step instead of
#: one per row: ~6% of an append in ``python -m bench runs``); larger ones by executemany.
MULTI_ROW_EVENTS = 64
#: A tail read of at most this many events runs on the event loop (see the module docstring).
INLINE_EVENTS = 32
#: A passive checkpoint is started (on the checkpoint thread) after this many commits of this store.
CHECKPOINT_EVERY = 64
#: A WAL longer than this many frames (4 KiB pages: 40 MiB) is reset by a RESTART checkpoint.
WAL_MAX_FRAMES = 10_000
#: How long that RESTART may wait for readers on an old snapshot (holding writers off meanwhile) before it
#: gives up until the next checkpoint: a reader left open elsewhere (a sqlite3 shell) never stalls appends.
RESTART_WAIT_MS = 200
_FRAME_INSERT = f"INSERT INTO frames ({', '.join(FRAME_COLUMNS)}) VALUES ({', '.join('?' * len(FRAME_COLUMNS))})"
_CANCEL_REQUESTED = RUN_COLUMNS.index("cancel_requested")
_CHECKPOINT_INSERT = (f"INSERT INTO checkpoints ({', '.join(CHECKPOINT_COLUMNS)}) "
                      f"VALUES ({', '.join('?' * len(CHECKPOINT_COLUMNS))})")


@functools.lru_cache(maxsize=MULTI_ROW_EVENTS)
def _events_insert(rows: int) -> str:
    """INSERT of ``rows`` events in one statement (SQLite's limit is 32766 parameters; 64 rows use 576)."""
    one = f"({', '.join('?' * len(EVENT_COLUMNS))})"
    return f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES {', '.join([one] * rows)}"


def _run(row: tuple[Any, ...]) -> RunRow:
    values = list(row)
    values[_CANCEL_REQUESTED] = bool(values[_CANCEL_REQUESTED])
    return RunRow._make(values)


def _run_values(run: RunRow) -> list[Any]:
    return [int(v) if isinstance(v, bool) else v for v in run]


def _changes(before: RunRow, after: RunRow) -> tuple[list[str], list[Any]]:
    """The columns a plan changed and their new values (an append touches a few of the 26)."""
    names, values = [], []
    for name, old, new in zip(RUN_COLUMNS, before, after, strict=True):
        if old != new:
            names.append(name)
            values.append(int(new) if isinstance(new, bool) else new)
    return names, values


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, waiting up to 30 s for locks."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    db.execute("PRAGMA busy_timeout=30000")
    # Switching to WAL takes an exclusive lock and does not wait on the busy handler:
    # several agentd opening a new file at once retry here.
    for attempt in range(200):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            if attempt == 199:
                raise
            time.sleep(0.01)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA wal_autocheckpoint=0")  # the store's checkpoint thread does it (module docstring)
    return db


class SqliteRunStore(RunStore):
    """The runs store in one SQLite file (see the module docstring)."""

    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._checkpointer: ThreadPoolExecutor | None = None
        self._cdb: sqlite3.Connection | None = None
        #: The checkpoint under way (at most one), and commits since the last one started.
        self._checkpointing: Future[None] | None = None
        self._commits = 0
        self._wdb: sqlite3.Connection | None = None
        self._rdb: sqlite3.Connection | None = None
        #: The event loop's own connection, for small tail reads and commits (never waits for a lock).
        self._ldb: sqlite3.Connection | None = None
        #: Transactions on their way through the writer thread (see _transact).
        self._writing = 0
        #: The row each run had after this store's last write to it (the fast path's guess; writer thread only).
        self._rows: dict[str, RunRow] = {}

    async def _write(self, func: Any, *args: Any) -> Any:
        assert self._writer is not None, "store not open"
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, func, *args)
        except sqlite3.OperationalError as error:
            raise RunsUnavailable(f"runs store {self.path}: {error}") from None

    async def _read(self, func: Any, *args: Any) -> Any:
        assert self._reader is not None, "store not open"
        try:
            return await asyncio.get_running_loop().run_in_executor(self._reader, func, *args)
        except sqlite3.OperationalError as error:
            raise RunsUnavailable(f"runs store {self.path}: {error}") from None

    async def open(self) -> None:
        """Open both connections and apply pending migrations."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="runs-sqlite-w")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="runs-sqlite-r")
        self._wdb = await asyncio.get_running_loop().run_in_executor(self._writer, connect, self.path)
        await self._write(self._migrate)
        self._rdb = await asyncio.get_running_loop().run_in_executor(self._reader, connect, self.path)
        self._ldb = await asyncio.get_running_loop().run_in_executor(self._reader, connect, self.path)
        self._ldb.execute("PRAGMA busy_timeout=0")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="runs-sqlite-c")
        self._cdb = await asyncio.get_running_loop().run_in_executor(self._checkpointer, connect, self.path)
        # A RESTART checkpoint holds new writers off while it waits for readers: never for longer than this.
        self._cdb.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")

    def _committed(self) -> None:
        """Count a commit; every CHECKPOINT_EVERY-th starts a checkpoint unless one is under way."""
        self._commits += 1
        if self._commits < CHECKPOINT_EVERY or self._checkpointer is None:
            return
        if self._checkpointing is not None and not self._checkpointing.done():
            return
        self._commits = 0
        self._checkpointing = self._checkpointer.submit(self._checkpoint_wal_sync)

    def _checkpoint_wal_sync(self) -> None:
        db = self._cdb
        if db is None:
            return
        try:
            busy, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > WAL_MAX_FRAMES:
                db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as error:  # another process checkpoints, or the disk is full: the next one retries
            log.warning("runs store %s: checkpoint failed: %s", self.path, error)

    def _migrate(self) -> None:
        db = self._wdb
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                       "name TEXT NOT NULL, applied_ms INTEGER NOT NULL)")
            done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for migration in migrations("sqlite"):
                if migration.version in done:
                    continue
                for statement in migration.statements:
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                           (migration.version, migration.name, int(time.time() * 1000)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Close the connections and stop the threads."""
        if self._ldb is not None:
            self._ldb.close()
            self._ldb = None
        if self._checkpointing is not None:
            await asyncio.wrap_future(self._checkpointing)
            self._checkpointing = None
        for pool, db in ((self._writer, self._wdb), (self._reader, self._rdb), (self._checkpointer, self._cdb)):
            if pool is not None:
                if db is not None:
                    await asyncio.get_running_loop().run_in_executor(pool, db.close)
                pool.shutdown(wait=True)
        self._writer = self._reader = self._checkpointer = None
        self._wdb = self._rdb = self._cdb = None

    # --- transactions -------------------------------------------------------------------------------

    def _transact_sync(self, run_id: str, frame_id: str | None, planner: Planner,
                       db: sqlite3.Connection | None = None) -> Plan:
        db = db or self._wdb
        assert db is not None
        plan = self._fast_sync(db, run_id, frame_id, planner)
        if plan is None:
            plan = self._locked_sync(db, run_id, frame_id, planner)
        self._remember(plan.row)
        return plan

    def _remember(self, row: RunRow) -> None:
        self._rows[row.run_id] = row
        if len(self._rows) > 4096:
            del self._rows[next(iter(self._rows))]

    def _fast_sync(self, db: sqlite3.Connection, run_id: str, frame_id: str | None, planner: Planner) -> Plan | None:
        """An append planned on the row this store wrote last, if the row is still that one.

        The update is conditioned on ``last_seq`` and the retention floor: if another writer (another agentd
        sharing the file) appended meanwhile, or retention moved the floor, nothing is written and the locked
        path reads the row and plans again. Saves the row's read and conversion per append (python -m bench
        runs, ratio_events_sqlite).
        """
        cached = self._rows.get(run_id)
        if cached is None or frame_id is not None:
            return None
        try:
            plan = planner(cached, None)
        except RunError:
            return None  # maybe only the cached row says so: let the locked path answer
        if plan.duplicate or plan.created or plan.frame is not None or not plan.events:
            return None
        names, values = _changes(cached, plan.row)
        db.execute("BEGIN IMMEDIATE")
        try:
            # Conditioned on the floor too: retention may have raised it since (the cached row would be stale).
            cursor = db.execute(f"UPDATE runs SET {', '.join(f'{n} = ?' for n in names)} "
                                "WHERE run_id = ? AND last_seq = ? AND retention_floor = ?",
                                (*values, run_id, cached.last_seq, cached.retention_floor))
            if cursor.rowcount != 1:
                db.execute("ROLLBACK")
                self._rows.pop(run_id, None)
                return None
            self._write_rows(db, plan)
            db.execute("COMMIT")
            return plan
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _write_rows(self, db: sqlite3.Connection, plan: Plan) -> None:
        if 1 < len(plan.events) <= MULTI_ROW_EVENTS:
            db.execute(_events_insert(len(plan.events)), list(chain.from_iterable(plan.events)))
        elif plan.events:
            db.executemany(_EVENT_INSERT, plan.events)  # rows are tuples in column order
        if plan.frame is not None:
            db.execute(_FRAME_INSERT, tuple(getattr(plan.frame, c) for c in FRAME_COLUMNS))
        if plan.checkpoint is not None:
            db.execute(_CHECKPOINT_INSERT, tuple(getattr(plan.checkpoint, c) for c in CHECKPOINT_COLUMNS))

    def _locked_sync(self, db: sqlite3.Connection, run_id: str, frame_id: str | None, planner: Planner) -> Plan:
        db.execute("BEGIN IMMEDIATE")
        try:
            raw = db.execute(_RUN_SELECT + " WHERE run_id = ?", (run_id,)).fetchone()
            run = None if raw is None else _run(raw)
            frame = None
            if frame_id is not None and run is not None:
                found = db.execute(f"SELECT {', '.join(FRAME_COLUMNS)} FROM frames WHERE run_id = ? AND frame_id = ?",
                                   (run_id, frame_id)).fetchone()
                frame = None if found is None else FrameRow(*found)
            plan = planner(run, frame)
            if not plan.duplicate:
                if plan.created:
                    db.execute(_RUN_INSERT, _run_values(plan.row))
                else:
                    assert run is not None
                    names, values = _changes(run, plan.row)
                    if names:
                        db.execute(f"UPDATE runs SET {', '.join(f'{n} = ?' for n in names)} WHERE run_id = ?",
                                   (*values, run_id))
                self._write_rows(db, plan)
            db.execute("COMMIT")
            return plan
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def _transact(self, run_id: str, frame_id: str | None, planner: Planner) -> Plan:
        db = self._ldb
        # On the loop when the writer thread has nothing outstanding (so this process's commits stay in order
        # and the row cache has one user at a time) and the write lock is free at once.
        if db is not None and not self._writing:
            try:
                plan = self._transact_sync(run_id, frame_id, planner, db)
            except sqlite3.OperationalError:
                pass  # busy (another agentd writes): wait for the lock on the writer thread
            else:
                self._committed()
                return plan
        self._writing += 1
        try:
            result: Plan = await self._write(self._transact_sync, run_id, frame_id, planner)
        finally:
            self._writing -= 1
        self._committed()
        return result

    # --- reads --------------------------------------------------------------------------------------

    def _get_sync(self, run_id: str) -> RunRow | None:
        assert self._rdb is not None
        raw = self._rdb.execute(_RUN_SELECT + " WHERE run_id = ?", (run_id,)).fetchone()
        return None if raw is None else _run(raw)

    async def get(self, run_id: str) -> RunRow | None:
        """The run's row, or None."""
        result: RunRow | None = await self._read(self._get_sync, run_id)
        return result

    def _events_sync(self, run_id: str, after: int, limit: int) -> list[EventRow]:
        assert self._rdb is not None
        return [EventRow(*row) for row in self._rdb.execute(_EVENT_SELECT, (run_id, after, limit))]

    async def _events(self, run_id: str, after: int, limit: int) -> list[EventRow]:
        result: list[EventRow] = await self._read(self._events_sync, run_id, after, limit)
        return result

    def _snapshot_sync(self, run_id: str, after: int, limit: int) -> tuple[RunRow | None, list[EventRow]]:
        run = self._get_sync(run_id)
        return run, (self._events_sync(run_id, after, limit) if run is not None else [])

    async def _snapshot(self, run_id: str, after: int, limit: int) -> tuple[RunRow | None, list[EventRow]]:
        db = self._ldb
        if db is not None:
            # A short tail on the loop itself (see the module docstring); anything else, or a busy database,
            # in one hop to the reader thread for both reads.
            try:
                raw = db.execute(_RUN_SELECT + " WHERE run_id = ?", (run_id,)).fetchone()
                if raw is None:
                    return None, []
                run = _run(raw)
                if run.last_seq - after <= INLINE_EVENTS:
                    return run, [EventRow(*row) for row in db.execute(_EVENT_SELECT, (run_id, after, limit))]
            except sqlite3.OperationalError:
                pass
        result: tuple[RunRow | None, list[EventRow]] = await self._read(self._snapshot_sync, run_id, after, limit)
        return result

    def _list_sync(self, tenant: str, agent_type: str, status: str, limit: int,
                   before: tuple[int, str] | None) -> list[RunRow]:
        assert self._rdb is not None
        sql, args = _RUN_SELECT + " WHERE tenant = ?", [tenant]
        if agent_type:
            sql, args = sql + " AND agent_type = ?", [*args, agent_type]
        if status:
            sql, args = sql + " AND status = ?", [*args, status]
        if before is not None:
            sql += " AND (created_ms < ? OR (created_ms = ? AND run_id < ?))"
            args += [before[0], before[0], before[1]]
        sql += " ORDER BY created_ms DESC, run_id DESC LIMIT ?"
        return [_run(row) for row in self._rdb.execute(sql, (*args, limit))]

    async def list_runs(self, tenant: str, agent_type: str, status: str, limit: int,
                        before: tuple[int, str] | None) -> list[RunRow]:
        """A tenant's runs, newest first."""
        result: list[RunRow] = await self._read(self._list_sync, tenant, agent_type, status, limit, before)
        return result

    def _active_sync(self) -> list[RunRow]:
        assert self._rdb is not None
        return [_run(row) for row in self._rdb.execute(_RUN_SELECT + " WHERE status IN ('pending', 'running')")]

    async def active_runs(self) -> list[RunRow]:
        """Every run that has not ended."""
        result: list[RunRow] = await self._read(self._active_sync)
        return result

    def _checkpoint_sync(self, run_id: str) -> CheckpointRow | None:
        assert self._rdb is not None
        raw = self._rdb.execute(f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM checkpoints WHERE run_id = ? "
                                "ORDER BY seq DESC LIMIT 1", (run_id,)).fetchone()
        return None if raw is None else CheckpointRow(*raw)

    async def latest_checkpoint(self, run_id: str) -> CheckpointRow | None:
        """The run's latest checkpoint, or None."""
        result: CheckpointRow | None = await self._read(self._checkpoint_sync, run_id)
        return result

    def _retain_sync(self, run_id: str, plan: RetentionPlan) -> None:
        db = self._wdb
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            floor_row = db.execute("SELECT retention_floor FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if floor_row is not None and plan.floor > int(floor_row[0]):
                prev = db.execute("SELECT prev_hash FROM events WHERE run_id = ? AND seq = ?",
                                  (run_id, plan.floor)).fetchone()
                db.execute("DELETE FROM events WHERE run_id = ? AND seq < ?", (run_id, plan.floor))
                db.execute("DELETE FROM checkpoints WHERE run_id = ? AND seq < (SELECT max(seq) FROM checkpoints "
                           "WHERE run_id = ?)", (run_id, run_id))
                db.execute("UPDATE runs SET retention_floor = ?, floor_prev_hash = COALESCE(?, last_hash) "
                           "WHERE run_id = ?", (plan.floor, prev[0] if prev else None, run_id))
            db.executemany("UPDATE events SET payload = NULL WHERE run_id = ? AND seq = ?",
                           [(run_id, seq) for seq in plan.prune])
            db.execute("COMMIT")
            self._rows.pop(run_id, None)  # its floor moved: the next append reads the row
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def _apply_retention(self, run: RunRow, plan: RetentionPlan) -> None:
        await self._write(self._retain_sync, run.run_id, plan)
