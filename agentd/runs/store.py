"""The runs store: one interface, two backends (SQLite, PostgreSQL), versioned migrations in the repo.

A backend implements a handful of primitives — one read-modify-write transaction
on a run (:meth:`RunStore._transact`), reads, retention — and everything a
transaction decides comes from the pure planner (:mod:`agentd.runs.state`), so
both backends follow the same rules. Open one with :func:`open_store`:

- ``sqlite:///path/to/runs.sqlite`` (the default: a file under agentd's data
  dir; in a dev cluster one file shared by every agentd of the host);
- ``postgresql://user@host:port/db`` or ``postgresql:///db?host=/socket/dir``
  (several hosts).

Migrations live in ``agentd/runs/migrations/NNNN_name.<dialect>.sql`` and are
applied in order, each once, by whichever agentd opens the store first
(serialized by a write lock on SQLite, an advisory lock on PostgreSQL).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from agentd.runs import state
from agentd.runs.model import (
    CheckpointRow,
    EventRow,
    FrameRow,
    NewEvent,
    RunNotFound,
    RunRow,
    RunSpec,
    StaleCursor,
)
from agentd.runs.retention import EventMeta, RetentionPlan, RetentionPolicy, check_cursor, plan_retention

#: (run row or None, the frame's idempotency record or None) -> what to write.
Planner = Callable[[RunRow | None, FrameRow | None], state.Plan]
#: Called after a commit that appended events: (the run's row after it, the events, in seq order).
OnCommit = Callable[[RunRow, tuple[EventRow, ...]], None]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: its number, name and SQL statements for a dialect."""

    version: int
    name: str
    statements: tuple[str, ...]


def migrations(dialect: str) -> list[Migration]:
    """The migrations of a dialect ("sqlite" or "postgres"), in version order."""
    found = []
    for entry in resources.files("agentd.runs").joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\." + dialect + r"\.sql", entry.name)
        if match is None:
            continue
        text = "\n".join(line for line in entry.read_text().splitlines() if not line.lstrip().startswith("--"))
        statements = tuple(s.strip() for s in text.split(";") if s.strip())
        found.append(Migration(int(match.group(1)), match.group(2), statements))
    return sorted(found, key=lambda m: m.version)


class RunStore(abc.ABC):
    """The durable log of every run. Methods raise :class:`~agentd.runs.model.RunError` subclasses."""

    #: "sqlite" or "postgres".
    dialect = ""

    def __init__(self) -> None:
        #: Called after each commit that appended events (wakes local followers, relays to other nodes).
        self.on_commit: OnCommit | None = None

    # --- the primitives a backend implements -----------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections (and threads)."""

    @abc.abstractmethod
    async def _transact(self, run_id: str, frame_id: str | None, planner: Planner) -> state.Plan:
        """Lock the run's row, read it (and the frame's record), plan, write the plan, commit."""

    @abc.abstractmethod
    async def get(self, run_id: str) -> RunRow | None:
        """The run's row, or None."""

    @abc.abstractmethod
    async def _events(self, run_id: str, after: int, limit: int) -> list[EventRow]:
        """Up to ``limit`` events with seq > ``after``, in seq order."""

    async def _snapshot(self, run_id: str, after: int, limit: int) -> tuple[RunRow | None, list[EventRow]]:
        """The run's row and up to ``limit`` events after ``after`` (a backend may read both in one go)."""
        run = await self.get(run_id)
        return run, (await self._events(run_id, after, limit) if run is not None else [])

    @abc.abstractmethod
    async def list_runs(self, tenant: str, agent_type: str, status: str, limit: int,
                        before: tuple[int, str] | None) -> list[RunRow]:
        """A tenant's runs, newest first (by created_ms, then run_id), after ``before`` when given."""

    @abc.abstractmethod
    async def active_runs(self) -> list[RunRow]:
        """Every run that has not ended (the janitor's sweep)."""

    @abc.abstractmethod
    async def latest_checkpoint(self, run_id: str) -> CheckpointRow | None:
        """The run's latest checkpoint, or None."""

    @abc.abstractmethod
    async def _apply_retention(self, run: RunRow, plan: RetentionPlan) -> None:
        """Delete events below ``plan.floor`` (saving the floor's prev_hash) and drop the listed payloads."""

    # --- the operations -----------------------------------------------------------------------------

    async def _run(self, run_id: str, frame_id: str | None, planner: Planner) -> state.Plan:
        plan = await self._transact(run_id, frame_id, planner)
        if plan.events and self.on_commit is not None:
            self.on_commit(plan.row, plan.events)
        return plan

    async def start(self, spec: RunSpec, now_ms: int) -> state.Plan:
        """StartRun: create the run (created) or return it again (duplicate); RunConflict otherwise."""
        return await self._run(spec.run_id, None, lambda row, _: state.plan_start(spec, row, now_ms))

    async def append_frame(self, run_id: str, frame_id: str, type_: str, payload: str, now_ms: int) -> state.Plan:
        """AppendFrame: accepted, or a replay (duplicate); FrameConflict, RunTerminal, RunBusy otherwise."""
        return await self._run(run_id, frame_id, lambda row, frame: state.plan_frame(
            row, frame, run_id, frame_id, type_, payload, now_ms))

    async def cancel(self, run_id: str, reason: str, now_ms: int) -> state.Plan:
        """CancelRun: append run.cancel_requested once."""
        return await self._run(run_id, None, lambda row, _: state.plan_cancel(row, run_id, reason, now_ms))

    async def claim(self, run_id: str, token: int, node_id: str, lease_id: int, now_ms: int,
                    max_recoveries: int) -> state.Plan:
        """An executor takes the run with its fencing token (run.executor_lost first if one was lost)."""
        return await self._run(run_id, None, lambda row, _: state.plan_claim(
            row, run_id, token, node_id, lease_id, now_ms, max_recoveries))

    async def append(self, run_id: str, token: int, events: Sequence[NewEvent], now_ms: int,
                     checkpoint: str | None = None) -> state.Plan:
        """An executor's append, fenced by its token (ExecutorFenced when deposed)."""
        return await self._run(run_id, None, lambda row, _: state.plan_append(
            row, run_id, token, events, now_ms, checkpoint))

    async def release(self, run_id: str, token: int, now_ms: int) -> state.Plan:
        """The executor hands the run back (run.executor_released)."""
        return await self._run(run_id, None, lambda row, _: state.plan_release(row, run_id, token, now_ms))

    async def read(self, run_id: str, after: int, limit: int = 512) -> tuple[RunRow, list[EventRow]]:
        """The run and its events from ``after + 1`` on (gap-free); StaleCursor below the retention floor."""
        run, events = await self._snapshot(run_id, after, limit)
        if run is None:
            raise RunNotFound(f"no run {run_id!r}")
        check_cursor(after, run.retention_floor)
        if events and events[0].seq != after + 1:
            # Retention moved the floor between the two reads: the events the cursor needs are gone.
            now = await self.get(run_id)
            raise StaleCursor(after, now.retention_floor if now is not None else events[0].seq)
        return run, events

    async def retain(self, run_id: str, policy: RetentionPolicy, now_ms: int) -> RetentionPlan:
        """Apply the retention policy to one run; returns what it did."""
        run = await self.get(run_id)
        if run is None:
            raise RunNotFound(f"no run {run_id!r}")
        metas: list[EventMeta] = []
        after = run.retention_floor - 1
        while True:
            batch = await self._events(run_id, after, 2048)
            for event in batch:
                frame_seq = 0
                if event.type in ("frame.started", "frame.handled") and event.payload is not None:
                    value = event.payload_value()
                    frame_seq = int(value.get("frame_seq", 0)) if isinstance(value, dict) else 0
                metas.append(EventMeta(event.seq, event.type, event.time_ms, event.payload is None, frame_seq))
            if len(batch) < 2048:
                break
            after = batch[-1].seq
        checkpoint = await self.latest_checkpoint(run_id)
        plan = plan_retention(metas, run.retention_floor, checkpoint.seq if checkpoint else 0, run.last_seq,
                              now_ms, policy)
        if plan.floor != run.retention_floor or plan.prune:
            await self._apply_retention(run, plan)
        return plan


def parse_url(url: str) -> tuple[str, str]:
    """(dialect, rest) of a store URL; ValueError for an unknown scheme."""
    if url.startswith("sqlite:///"):
        return "sqlite", url[len("sqlite://"):]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres", url
    raise ValueError(f"unknown runs store URL {url!r}: use sqlite:///PATH or postgresql://...")


def open_store(url: str) -> RunStore:
    """A store for a URL (not yet opened: ``await store.open()``)."""
    dialect, rest = parse_url(url)
    if dialect == "sqlite":
        from agentd.runs.sqlite import SqliteRunStore

        return SqliteRunStore(rest)
    from agentd.runs.postgres import PostgresRunStore

    return PostgresRunStore(rest)
