"""The PostgreSQL runs store, for runs served from several hosts.

Why asyncpg rather than psycopg 3: it is native asyncio with the binary protocol
(the bench's raw-insert baseline and our appends use the same driver, and asyncpg
is the faster of the two on small statements), and its connections take
``LISTEN`` callbacks directly (:meth:`listen`), which is how other nodes' appends
wake this node's followers. psycopg 3 would serve as well; one driver is enough.

A transaction locks the run's row (``SELECT ... FOR UPDATE``), so appends to one
run serialize and seqs never collide; two concurrent starts of a new run id race
on the primary key and the loser retries once (it then sees the run). Each commit
that appended events sends ``NOTIFY mabeam_runs, '<run_id>:<seq>'``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import asyncpg

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

#: The NOTIFY channel of run appends; the payload is "<run_id>:<seq>".
CHANNEL = "mabeam_runs"
#: Advisory lock key serializing migrations between agentd starting at once.
_MIGRATION_LOCK = 0x6D6162656D72756E

_RUN_SELECT = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
_RUN_INSERT = (f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) "
               f"VALUES ({', '.join(f'${i + 1}' for i in range(len(RUN_COLUMNS)))})")
_EVENT_INSERT = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
                 f"VALUES ({', '.join(f'${i + 1}' for i in range(len(EVENT_COLUMNS)))})")
_EVENT_SELECT = (f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE run_id = $1 AND seq > $2 "
                 "ORDER BY seq LIMIT $3")
_FRAME_INSERT = (f"INSERT INTO frames ({', '.join(FRAME_COLUMNS)}) "
                 f"VALUES ({', '.join(f'${i + 1}' for i in range(len(FRAME_COLUMNS)))})")
_CHECKPOINT_INSERT = (f"INSERT INTO checkpoints ({', '.join(CHECKPOINT_COLUMNS)}) "
                      f"VALUES ({', '.join(f'${i + 1}' for i in range(len(CHECKPOINT_COLUMNS)))})")

#: SQL types of the events columns, in EVENT_COLUMNS order (for unnest).
_EVENT_TYPES = ("text", "bigint", "text", "integer", "bigint", "text", "text", "text", "text")

_UNAVAILABLE = (OSError, asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.InterfaceError,
                asyncpg.exceptions.CannotConnectNowError, TimeoutError)


def _run(record: Any) -> RunRow:
    return RunRow(*(record[c] for c in RUN_COLUMNS))


def _values(obj: Any, columns: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(getattr(obj, c) for c in columns)


class PostgresRunStore(RunStore):
    """The runs store in a PostgreSQL database (see the module docstring)."""

    dialect = "postgres"

    def __init__(self, dsn: str, pool_size: int = 8) -> None:
        super().__init__()
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        #: The row each run had after this store's last write to it (the fast path's guess; see _fast).
        self._rows: dict[str, RunRow] = {}

    def _unavailable(self, error: BaseException) -> RunsUnavailable:
        return RunsUnavailable(f"runs store (PostgreSQL): {type(error).__name__}: {error}")

    async def open(self) -> None:
        """Create the connection pool and apply pending migrations."""
        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size,
                                                   command_timeout=30)
        except _UNAVAILABLE as error:
            raise self._unavailable(error) from None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                               "name TEXT NOT NULL, applied_ms BIGINT NOT NULL)")
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for migration in migrations("postgres"):
                if migration.version in done:
                    continue
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, $3)", migration.version,
                                   migration.name, int(time.time() * 1000))

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool (the store must be open)."""
        assert self._pool is not None, "store not open"
        return self._pool

    async def listen(self, callback: Callable[[str, int], None], on_lost: Callable[[], None]) -> Callable[[], Any]:
        """Call ``callback(run_id, seq)`` for every commit of any node; returns an async closer.

        The listening connection is one of its own (not from the pool), kept for the caller's lifetime;
        ``on_lost`` is called if it breaks.
        """
        conn = await asyncpg.connect(self.dsn)
        conn.add_termination_listener(lambda _conn: on_lost())

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            run_id, _, seq = payload.rpartition(":")
            if run_id and seq.isdigit():
                callback(run_id, int(seq))

        await conn.add_listener(CHANNEL, on_notify)

        async def close() -> None:
            await conn.close()

        return close

    # --- transactions -------------------------------------------------------------------------------

    async def _transact(self, run_id: str, frame_id: str | None, planner: Planner) -> Plan:
        try:
            plan = await self._fast(run_id, frame_id, planner)
            if plan is not None:
                return plan
            for attempt in range(2):
                try:
                    plan = await self._transact_once(run_id, frame_id, planner)
                    break
                except asyncpg.exceptions.UniqueViolationError:
                    if attempt == 1:
                        raise
        except _UNAVAILABLE as error:
            raise self._unavailable(error) from None
        self._remember(plan.row)
        return plan

    def _remember(self, row: RunRow) -> None:
        self._rows[row.run_id] = row
        if len(self._rows) > 4096:
            del self._rows[next(iter(self._rows))]

    async def _fast(self, run_id: str, frame_id: str | None, planner: Planner) -> Plan | None:
        """An append planned on the row this store wrote last, committed by one statement if the row is still
        that one (``last_seq`` and the retention floor unchanged); None when it cannot be (no cached row, a frame or a checkpoint to
        write, or another writer got there first) — the locked path then reads the row and plans again.

        One round trip instead of five (BEGIN, SELECT ... FOR UPDATE, INSERT, UPDATE + NOTIFY, COMMIT): an
        executor's appends to its run are the hot path (python -m bench runs, ratio_events_postgres).
        """
        cached = self._rows.get(run_id)
        if cached is None or frame_id is not None:
            return None
        try:
            plan = planner(cached, None)
        except RunError:
            return None  # maybe only the cached row says so: let the locked path answer
        if plan.duplicate or plan.created or plan.frame is not None or plan.checkpoint is not None or not plan.events:
            return None
        changed = [(c, new) for c, old, new in zip(RUN_COLUMNS, cached, plan.row, strict=True) if old != new]
        names = [c for c, _ in changed]
        args: list[Any] = [run_id, cached.last_seq, cached.retention_floor, *(v for _, v in changed)]
        sets = ", ".join(f"{name} = ${i + 4}" for i, name in enumerate(names))
        base = len(args)
        arrays = ", ".join(f"${base + i + 1}::{kind}[]" for i, kind in enumerate(_EVENT_TYPES))
        args += [list(column) for column in zip(*plan.events, strict=True)]  # rows are tuples in column order
        args += [CHANNEL, f"{run_id}:{plan.events[-1].seq}"]
        # Conditioned on the floor too: retention may have raised it since (the cached row would be stale).
        sql = (f"WITH u AS (UPDATE runs SET {sets} WHERE run_id = $1 AND last_seq = $2 AND retention_floor = $3 "
               "RETURNING 1), "
               f"e AS (INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT * FROM unnest({arrays}) AS t "
               "WHERE EXISTS (SELECT 1 FROM u)), "
               f"n AS (SELECT pg_notify(${len(args) - 1}, ${len(args)}) FROM u) "
               "SELECT (SELECT count(*) FROM u) + (SELECT count(*) FROM n)")
        async with self.pool.acquire() as conn:
            done = await conn.fetchval(sql, *args)
        if not done:
            self._rows.pop(run_id, None)
            return None
        self._remember(plan.row)
        return plan

    async def _transact_once(self, run_id: str, frame_id: str | None, planner: Planner) -> Plan:
        async with self.pool.acquire() as conn, conn.transaction():
            raw = await conn.fetchrow(_RUN_SELECT + " WHERE run_id = $1 FOR UPDATE", run_id)
            run = None if raw is None else _run(raw)
            frame = None
            if frame_id is not None and run is not None:
                found = await conn.fetchrow(f"SELECT {', '.join(FRAME_COLUMNS)} FROM frames "
                                            "WHERE run_id = $1 AND frame_id = $2", run_id, frame_id)
                frame = None if found is None else FrameRow(*found)
            plan = planner(run, frame)
            if plan.duplicate:
                return plan
            if plan.events:
                await conn.executemany(_EVENT_INSERT, plan.events)
            notify = f"{run_id}:{plan.events[-1].seq}" if plan.events else ""
            if plan.created:
                await conn.execute(_RUN_INSERT, *_values(plan.row, RUN_COLUMNS))
                if notify:
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, notify)
            else:
                assert run is not None
                names = [c for c in RUN_COLUMNS[1:] if getattr(run, c) != getattr(plan.row, c)]
                sets = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
                values = [getattr(plan.row, name) for name in names]
                if names and notify:  # one round trip: the row's update and the NOTIFY sent at commit
                    await conn.execute(f"WITH u AS (UPDATE runs SET {sets} WHERE run_id = $1 RETURNING 1) "
                                       f"SELECT pg_notify(${len(names) + 2}, ${len(names) + 3}) FROM u",
                                       run_id, *values, CHANNEL, notify)
                elif names:
                    await conn.execute(f"UPDATE runs SET {sets} WHERE run_id = $1", run_id, *values)
            if plan.frame is not None:
                await conn.execute(_FRAME_INSERT, *_values(plan.frame, FRAME_COLUMNS))
            if plan.checkpoint is not None:
                await conn.execute(_CHECKPOINT_INSERT, *_values(plan.checkpoint, CHECKPOINT_COLUMNS))
            return plan

    # --- reads --------------------------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            async with self.pool.acquire() as conn:
                return list(await conn.fetch(sql, *args))
        except _UNAVAILABLE as error:
            raise self._unavailable(error) from None

    async def get(self, run_id: str) -> RunRow | None:
        """The run's row, or None."""
        rows = await self._fetch(_RUN_SELECT + " WHERE run_id = $1", run_id)
        return _run(rows[0]) if rows else None

    async def _events(self, run_id: str, after: int, limit: int) -> list[EventRow]:
        return [EventRow(*r) for r in await self._fetch(_EVENT_SELECT, run_id, after, limit)]

    async def _snapshot(self, run_id: str, after: int, limit: int) -> tuple[RunRow | None, list[EventRow]]:
        try:
            async with self.pool.acquire() as conn:
                raw = await conn.fetchrow(_RUN_SELECT + " WHERE run_id = $1", run_id)
                if raw is None:
                    return None, []
                return _run(raw), [EventRow(*r) for r in await conn.fetch(_EVENT_SELECT, run_id, after, limit)]
        except _UNAVAILABLE as error:
            raise self._unavailable(error) from None

    async def list_runs(self, tenant: str, agent_type: str, status: str, limit: int,
                        before: tuple[int, str] | None) -> list[RunRow]:
        """A tenant's runs, newest first."""
        sql, args = _RUN_SELECT + " WHERE tenant = $1", [tenant]
        if agent_type:
            args.append(agent_type)
            sql += f" AND agent_type = ${len(args)}"
        if status:
            args.append(status)
            sql += f" AND status = ${len(args)}"
        if before is not None:
            args += [before[0], before[1]]
            sql += f" AND (created_ms, run_id) < (${len(args) - 1}, ${len(args)})"
        args.append(limit)
        sql += f" ORDER BY created_ms DESC, run_id DESC LIMIT ${len(args)}"
        return [_run(r) for r in await self._fetch(sql, *args)]

    async def active_runs(self) -> list[RunRow]:
        """Every run that has not ended."""
        return [_run(r) for r in await self._fetch(_RUN_SELECT + " WHERE status IN ('pending', 'running')")]

    async def latest_checkpoint(self, run_id: str) -> CheckpointRow | None:
        """The run's latest checkpoint, or None."""
        rows = await self._fetch(f"SELECT {', '.join(CHECKPOINT_COLUMNS)} FROM checkpoints WHERE run_id = $1 "
                                 "ORDER BY seq DESC LIMIT 1", run_id)
        return CheckpointRow(*rows[0]) if rows else None

    async def _apply_retention(self, run: RunRow, plan: RetentionPlan) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                floor = await conn.fetchval("SELECT retention_floor FROM runs WHERE run_id = $1 FOR UPDATE",
                                            run.run_id)
                if floor is not None and plan.floor > int(floor):
                    prev = await conn.fetchval("SELECT prev_hash FROM events WHERE run_id = $1 AND seq = $2",
                                               run.run_id, plan.floor)
                    await conn.execute("DELETE FROM events WHERE run_id = $1 AND seq < $2", run.run_id, plan.floor)
                    await conn.execute("DELETE FROM checkpoints WHERE run_id = $1 AND seq < (SELECT max(seq) FROM "
                                       "checkpoints WHERE run_id = $1)", run.run_id)
                    await conn.execute("UPDATE runs SET retention_floor = $2, floor_prev_hash = COALESCE($3, "
                                       "last_hash) WHERE run_id = $1", run.run_id, plan.floor, prev)
                await conn.executemany("UPDATE events SET payload = NULL WHERE run_id = $1 AND seq = $2",
                                       [(run.run_id, seq) for seq in plan.prune])
            self._rows.pop(run.run_id, None)  # its floor moved: the next append reads the row
        except _UNAVAILABLE as error:
            raise self._unavailable(error) from None
