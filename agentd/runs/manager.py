"""The durable runs of one agentd: the store, wake-ups, executors and the janitor, behind the API both faces use.

:class:`RunManager` is what the gRPC :class:`~agentd.runs.service.RunServicer` and the
HTTP face (:mod:`agentd.runs.http`) call. It validates requests (one set of rules,
:mod:`agentd.runs.validation`), writes through the store, starts an executor for each
run it starts (the node that accepts StartRun executes the run, through the normal
lease path), answers the effects of run agents in its workers, and serves streams
from the log to any client — a run executing on another node streams here the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentd.runs.config import RunsConfig
from agentd.runs.executor import Executor
from agentd.runs.frames import APPROVAL_FRAME, approval_frame_id
from agentd.runs.lease import RunLease, holder_of
from agentd.runs.localwake import LocalRelay
from agentd.runs.model import (
    POLICIES,
    STATUSES,
    TERMINAL,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalNotFound,
    EventRow,
    FrameConflict,
    InvalidRunRequest,
    RunConflict,
    RunError,
    RunNotFound,
    RunRow,
    RunSpec,
    RunsUnavailable,
    StaleCursor,
    canonical_json,
)
from agentd.runs.scan import LogScan
from agentd.runs.store import RunStore, open_store
from agentd.runs.validation import (
    MAX_REASON,
    check_labels,
    check_policy,
    check_run_id,
    check_tenant,
    check_type,
    json_text,
    raise_if,
)
from agentd.runs.wake import EtcdRelay, PostgresRelay, Wakeups
from agentd.workers import WorkerPool
from mabeam import keys
from mabeam.etcd.client import EtcdClient, EtcdError
from mabeam.security.context import tenant_for, visible

if TYPE_CHECKING:
    from agentd.models.router import ModelRouter
    from agentd.quotas import RunQuota

log = logging.getLogger("agentd.runs")

DEFAULT_TENANT = "default"
#: With same-host datagram wake-ups on, etcd wake-up puts coalesce this long (agentd/runs/wake.py, EtcdRelay.settle).
ETCD_SETTLE_S = 0.02
PAGE = 256


@dataclass(frozen=True, slots=True)
class RunView:
    """A run's snapshot: its row and whether its executor's lease key is alive in etcd."""

    row: RunRow
    live: bool


class RunManager:
    """Durable runs on one agentd (see the module docstring)."""

    def __init__(self, config: RunsConfig, pool: WorkerPool, node_id: str, etcd: EtcdClient, cluster: str,
                 store_url: str, agent_types: Mapping[str, Any]) -> None:
        self.config = config
        self.pool = pool
        self.node_id = node_id
        self.etcd = etcd
        self.cluster = cluster
        self.store: RunStore = open_store(store_url)
        self.store_url = store_url
        #: Agent type name -> class, as the workers load them (for defaults and the allow-list).
        self.agent_types = dict(agent_types)
        self.wakeups = Wakeups()
        self.relay: EtcdRelay | PostgresRelay | None = None
        #: SQLite: same-host datagram wake-ups beside the etcd relay (None with PostgreSQL).
        self.local: LocalRelay | None = None
        self.executors: dict[str, Executor] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._relay_ready = asyncio.Event()
        self.janitor: Any = None
        #: The daemon's model router (None without a [models] config): what a run's model op calls.
        self.models: ModelRouter | None = None
        #: The tenants' ``max_concurrent_runs`` (agentd.quotas; None: not counted): a unit per run not ended.
        self.quota: RunQuota | None = None
        #: run id -> tenant (immutable once a run exists): the tenant check of a request by run id costs a
        #: store read only the first time this node sees the run.
        self._tenants: dict[str, str] = {}

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    # --- lifecycle ------------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        """Open the store (migrating it), start the wake-up relay and the janitor's candidacy."""
        await self.store.open()
        if self.store.dialect == "postgres":
            from agentd.runs.postgres import PostgresRunStore

            assert isinstance(self.store, PostgresRunStore)
            self.relay = PostgresRelay(self.store.listen, self.wakeups)
        else:
            from agentd.runs.sqlite import SqliteRunStore

            assert isinstance(self.store, SqliteRunStore)
            self.relay = EtcdRelay(self.etcd, self.cluster, self.node_id, self.wakeups)
            self.local = LocalRelay(self.store.path, self.node_id, self.wakeups)
            self.local.start()
            if self.local.active:
                self.relay.settle = ETCD_SETTLE_S
                self.wakeups.on_follow = self.local.following
                self._spawn(self.local.run())
        relay, local = self.relay, self.local

        def committed(row: RunRow, events: tuple[EventRow, ...]) -> None:
            self.wakeups.committed(row, events)  # this node's followers: the events themselves
            if local is not None:
                local.published(row.run_id, row.last_seq)  # the host's other agentd: a datagram
            relay.published(row.run_id, row.last_seq)  # every node, reliably: etcd or NOTIFY

        self.store.on_commit = committed
        self.pool.run_ops = self._run_op
        self._spawn(relay.run(self._relay_ready.set))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self._relay_ready.wait()
        from agentd.runs.janitor import Janitor

        self.janitor = Janitor(self)
        self._spawn(self.janitor.run())
        self._spawn(self._take_assignments())

    async def stop(self) -> None:
        """Resign as janitor, hand every executing run back (another node resumes it), close the store."""
        if self.janitor is not None:
            await self.janitor.stop()
        executors = list(self.executors.values())
        for executor in executors:
            await executor.stop(release=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.pool.run_ops = None
        if self.local is not None:
            self.wakeups.on_follow = None
            self.local.close()
        await self.store.close()

    # --- executors --------------------------------------------------------------------------------------

    async def execute(self, run: RunRow, wait_claimed: float = 10.0) -> bool:
        """Become the run's executor if nobody holds its lease; True when this node now executes it."""
        if run.run_id in self.executors:
            return True
        lease = RunLease(self.etcd, self.cluster, run.run_id, self.node_id, run.agent_type, self.config.lease_ttl)
        try:
            if not await lease.acquire():
                return False
        except EtcdError as error:
            log.warning("run %s: cannot take its lease (%s); the janitor retries", run.run_id, error)
            return False
        if run.run_id in self.executors:  # taken meanwhile by another path of this node
            await lease.release()
            return True
        executor = Executor(self, run.run_id, run.tenant, run.agent_type, run.input_policy, lease)
        self.executors[run.run_id] = executor
        self._spawn(self._execute(executor))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_claimed):
                await executor.claimed.wait()
        return True

    async def _take_assignments(self) -> None:
        """Resume the runs the janitor hands this node (``runs/assign/<node>/``: agentd/runs/janitor.py)."""
        prefix = keys.run_assignments(self.cluster, self.node_id)
        while True:
            try:
                found, revision = await self.etcd.get_prefix(prefix)
                for kv in found:
                    self._spawn(self._resume_assigned(kv.key))
                async for batch in self.etcd.watch_prefix(prefix, revision + 1):
                    for event in batch.events:
                        if event.kind == "put":
                            self._spawn(self._resume_assigned(event.kv.key))
            except EtcdError:
                await asyncio.sleep(0.2)

    async def _resume_assigned(self, key: bytes) -> None:
        run_id = key.rsplit(b"/", 1)[-1].decode()
        try:
            run = await self.store.get(run_id)
            if run is not None and not run.terminal:
                log.info("run %s: resuming it on %s, as the janitor asked", run_id, self.node_id)
                await self.execute(run)  # the lease decides: False if another executor holds it meanwhile
        except Exception:  # the janitor takes it back after its grace
            log.exception("run %s: the janitor's request to resume it failed", run_id)
        finally:
            with contextlib.suppress(EtcdError):
                await self.etcd.delete(key)

    async def _execute(self, executor: Executor) -> None:
        try:
            await executor.run()
        finally:
            if self.executors.get(executor.run_id) is executor:
                del self.executors[executor.run_id]
            if self.quota is not None and executor.outcome.removeprefix("run.") in TERMINAL:
                await self.quota.release(executor.tenant, executor.run_id)  # the run's concurrent-runs slot
            log.info("run %s: executor on %s ended (%s)", executor.run_id, self.node_id, executor.outcome)

    async def _run_op(self, run_id: str, delivery_id: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        executor = self.executors.get(run_id)
        if executor is None:
            return {"error": "EXECUTOR_FENCED", "message": f"this node no longer executes run {run_id}"}
        return await executor.op(delivery_id, op, args)

    # --- tenants --------------------------------------------------------------------------------------

    async def _run_tenant(self, run_id: str) -> str | None:
        """The tenant of an existing run (None when there is no such run)."""
        tenant = self._tenants.get(run_id)
        if tenant is None:
            row = await self.store.get(run_id)
            if row is None:
                return None
            tenant = row.tenant
            if len(self._tenants) >= 100_000:
                self._tenants.clear()
            self._tenants[run_id] = tenant
        return tenant

    async def _check_visible(self, run_id: str) -> None:
        """RunNotFound, worded as for a missing run, when the run belongs to a tenant the caller cannot see."""
        if not run_id:
            return  # validation answers
        tenant = await self._run_tenant(run_id)
        if tenant is not None and not visible(tenant):
            raise RunNotFound(f"no run {run_id!r}")

    # --- the API ----------------------------------------------------------------------------------------

    async def start_run(self, run_id: str, tenant: str, agent_type: str, input_json: str, input_policy: str,
                        labels: Mapping[str, str]) -> tuple[RunView, bool]:
        """StartRun: (the run, created?). Idempotent by run_id; RunConflict for a different request."""
        tenant = tenant_for(tenant)  # the token's tenant; another only for an admin
        violations: dict[str, str] = {}
        check_run_id("run_id", run_id, violations, required=False)
        check_tenant("tenant", tenant, violations)
        if not agent_type:
            violations["agent_type"] = "must not be empty"
        elif agent_type not in self.agent_types:
            violations["agent_type"] = (f"{agent_type[:64]!r} is not an allowed agent type; allowed: "
                                        f"{', '.join(sorted(self.agent_types))}")
        elif not _handles_frames(self.agent_types[agent_type]):
            violations["agent_type"] = f"{agent_type!r} does not handle run frames (it has no handle_frame)"
        check_policy("input_policy", input_policy, violations)
        check_labels("labels", labels, violations)
        payload = json_text("input_json", input_json, violations) if input_json else None
        raise_if(violations)
        policy = input_policy or str(getattr(self.agent_types[agent_type], "input_policy", "enqueue"))
        if policy not in POLICIES:
            policy = "enqueue"
        spec = RunSpec(run_id=run_id or f"run-{uuid.uuid4().hex}", tenant=tenant or DEFAULT_TENANT,
                       agent_type=agent_type, input_policy=policy, labels=dict(labels), input=payload)
        quota = self.quota
        if quota is not None and (not run_id or await self.store.get(spec.run_id) is None):
            # A new run takes a unit of the tenant's max_concurrent_runs first (a replay holds its own already).
            await quota.acquire(spec.tenant, spec.run_id, f"starting run {spec.run_id!r} ({agent_type})")
        else:
            quota = None
        try:
            plan = await self.store.start(spec, self._now_ms())
        except Exception as error:
            if quota is not None:
                await self._give_back(quota, spec.tenant, spec.run_id)
            if isinstance(error, RunConflict):
                owner = await self._run_tenant(spec.run_id)
                if owner is not None and owner != spec.tenant:
                    # Run ids are one namespace: the id is taken, and nothing about the other tenant's run is told.
                    raise RunConflict(f"run id {spec.run_id!r} is taken; use a new run_id") from None
            raise
        if plan.created and await self.execute(plan.row):
            row = await self.store.get(spec.run_id)  # claimed (or ended) by the executor just started here
            if row is not None:
                return RunView(row, bool(row.executor_node)), True
        return await self.get(spec.run_id), plan.created

    async def _give_back(self, quota: RunQuota, tenant: str, run_id: str) -> None:
        """A StartRun that took a unit failed: the unit goes back, unless the run exists (an identical start
        racing this one created it)."""
        try:
            row = await self.store.get(run_id)
        except RunError:
            row = None
        if row is None or row.tenant != tenant:
            await quota.release(tenant, run_id)

    async def run_status(self, run_id: str) -> tuple[str, bool] | None:
        """(tenant, ended?) of a run, None when there is none (the run quota's sweep asks)."""
        row = await self.store.get(run_id)
        return None if row is None else (row.tenant, row.terminal)

    async def append_frame(self, run_id: str, frame_id: str, type_: str, payload_json: str) -> tuple[bool, int]:
        """AppendFrame: (duplicate?, seq of its frame.received)."""
        violations: dict[str, str] = {}
        check_run_id("run_id", run_id, violations)
        check_run_id("frame_id", frame_id, violations)
        check_type("type", type_, violations)
        if type_ == APPROVAL_FRAME:
            violations["type"] = f"{APPROVAL_FRAME!r} frames come from ApproveToolCall / DenyToolCall only"
        payload = json_text("payload_json", payload_json, violations)
        raise_if(violations)
        assert payload is not None
        await self._check_visible(run_id)
        plan = await self.store.append_frame(run_id, frame_id, type_, payload, self._now_ms())
        return plan.duplicate, plan.seq

    async def decide_tool_call(self, run_id: str, tool_call_id: str, approved: bool, note: str) -> tuple[bool, int]:
        """ApproveToolCall / DenyToolCall: (duplicate?, seq of the decision frame).

        The decision is a frame of type ``tool.approval`` (frame id ``approval:<tool_call_id>``): durable,
        idempotent, and final — the other decision afterwards is APPROVAL_DECIDED. It must answer a
        ``tool.approval_requested`` of the run, and it comes too late once the executor recorded the expiry.
        """
        violations: dict[str, str] = {}
        check_run_id("run_id", run_id, violations)
        check_run_id("tool_call_id", tool_call_id, violations)
        if len(note) > MAX_REASON:
            violations["note"] = f"is {len(note)} characters long; the limit is {MAX_REASON}"
        raise_if(violations)
        await self._check_visible(run_id)
        requested, word = await self._approval_state(run_id, tool_call_id)
        if not requested:
            raise ApprovalNotFound(f"run {run_id!r} has no tool call {tool_call_id!r} waiting for approval")
        if word is not None and word.get("note") == "expired" and not word.get("approved"):
            raise ApprovalExpired(f"the approval deadline of tool call {tool_call_id!r} passed (event "
                                  f"{word.get('seq')}); the call was denied")
        payload = canonical_json({"approved": approved, "note": note})
        try:
            plan = await self.store.append_frame(run_id, approval_frame_id(tool_call_id), APPROVAL_FRAME, payload,
                                                 self._now_ms())
        except FrameConflict:
            decided = "approved" if word and word.get("approved") else "denied"
            raise ApprovalDecided(f"tool call {tool_call_id!r} of run {run_id!r} was already {decided}"
                                  f" (event {word.get('seq') if word else '?'}); a decision is final") from None
        return plan.duplicate, plan.seq

    async def _approval_state(self, run_id: str, tool_call_id: str) -> tuple[bool, dict[str, Any] | None]:
        """Whether the run asked about ``tool_call_id``, and the first word on it so far (None: undecided)."""
        scan = LogScan()
        requested = False
        while True:
            try:
                _, events = await self.store.read(run_id, scan.cursor, 512)
            except StaleCursor as stale:
                scan.cursor = stale.floor - 1
                continue
            for event in events:
                scan.feed(event)
                if event.type == "tool.approval_requested" and event.payload is not None:
                    data = json.loads(event.payload)
                    requested = requested or (isinstance(data, dict) and data.get("tool_call_id") == tool_call_id)
            if len(events) < 512:
                return requested, scan.approvals.get(tool_call_id)

    async def cancel(self, run_id: str, reason: str) -> tuple[bool, int]:
        """CancelRun: (duplicate?, seq of run.cancel_requested)."""
        violations: dict[str, str] = {}
        check_run_id("run_id", run_id, violations)
        if len(reason) > MAX_REASON:
            violations["reason"] = f"is {len(reason)} characters long; the limit is {MAX_REASON}"
        raise_if(violations)
        await self._check_visible(run_id)
        plan = await self.store.cancel(run_id, reason, self._now_ms())
        return plan.duplicate, plan.seq

    async def get(self, run_id: str) -> RunView:
        """GetRun: the snapshot (RunNotFound for an unknown run)."""
        violations: dict[str, str] = {}
        check_run_id("run_id", run_id, violations)
        raise_if(violations)
        row = await self.store.get(run_id)
        if row is None or not visible(row.tenant):
            raise RunNotFound(f"no run {run_id!r}")
        live = False
        if row.executor_node:
            try:
                holder = await holder_of(self.etcd, self.cluster, run_id)
            except EtcdError:
                holder = None
            live = holder is not None and int(holder.get("fencing_token", 0)) == row.executor_token
        return RunView(row, live)

    async def list(self, tenant: str, agent_type: str, status: str, page_size: int,
                   page_token: str) -> tuple[list[RunView], str]:
        """ListRuns: a page of runs, newest first, and the next page's token ("" on the last page)."""
        tenant = tenant_for(tenant)
        violations: dict[str, str] = {}
        check_tenant("tenant", tenant, violations)
        if status and status not in STATUSES:
            violations["status"] = f"{status[:32]!r} is not one of {', '.join(STATUSES)}"
        if not 0 <= page_size <= 1000:
            violations["page_size"] = "must be between 1 and 1000 (0 means 100)"
        before = None
        if page_token:
            created, _, last = page_token.partition(":")
            if not created.isdigit() or not last:
                violations["page_token"] = "is not a token from a previous ListRuns answer"
            else:
                before = (int(created), last)
        raise_if(violations)
        size = page_size or 100
        rows = await self.store.list_runs(tenant or DEFAULT_TENANT, agent_type, status, size + 1, before)
        more = len(rows) > size
        rows = rows[:size]
        token = f"{rows[-1].created_ms}:{rows[-1].run_id}" if more and rows else ""
        return [RunView(r, bool(r.executor_node)) for r in rows], token

    async def open_stream(self, run_id: str, cursor: int, follow: bool) -> AsyncIterator[EventRow]:
        """StreamRun: raises RunNotFound / StaleCursor / InvalidRunRequest *now*; then yields events from
        ``cursor + 1``, gap-free, until caught up (or, with ``follow``, until the run's terminal event)."""
        violations: dict[str, str] = {}
        check_run_id("run_id", run_id, violations)
        if cursor < 0:
            violations["cursor"] = "must be >= 0"
        raise_if(violations)
        await self._check_visible(run_id)
        sub = self.wakeups.subscribe(run_id, handoff=True)
        try:
            sub.clear()
            run, events = await self.store.read(run_id, cursor, PAGE)
        except BaseException:
            sub.close()
            raise
        return self._follow(sub, run, events, cursor, follow)

    async def _follow(self, sub: Any, run: RunRow, events: list[EventRow], cursor: int,
                      follow: bool) -> AsyncIterator[EventRow]:
        with sub:
            while True:
                for event in events:
                    yield event
                    cursor = event.seq
                if len(events) == PAGE:
                    sub.clear()
                    run, events = await self.store.read(run.run_id, cursor, PAGE)
                    continue
                if cursor >= run.last_seq and (run.terminal or not follow):
                    return
                if cursor >= run.last_seq:
                    await sub.wait()
                # Events this node committed come straight from the commit, when they are exactly the next ones;
                # anything else (a gap, another node's commit, a missed wake-up) is read from the log.
                handed = sub.take(cursor)
                # "Nothing new" is believed only when the row we hold is as new as what we delivered (a read gets
                # the row before the events, so it can be older: then the log says whether the run ended).
                if handed is not None and (handed[0] is not None or cursor == run.last_seq):
                    run, events = handed[0] or run, handed[1]
                    continue
                run, events = await self.store.read(run.run_id, cursor, PAGE)

    async def wait_ready(self) -> None:
        """Return once the wake-up relay listens (followers elsewhere will hear this node's commits)."""
        await self._relay_ready.wait()


def _handles_frames(cls: Any) -> bool:
    from agentd.behaviour import Agent

    return getattr(cls, "handle_frame", None) is not Agent.handle_frame


__all__ = ["RunManager", "RunView", "RunError", "RunsUnavailable", "InvalidRunRequest"]
