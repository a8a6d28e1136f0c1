"""The agentd main process's side of isolation: it starts, routes to, watches and restarts worker processes.

Each worker is a fresh interpreter (``python -m agentd.worker``; spawn, never a fork
of this process, so starting one after gRPC is safe). Agents run in shared
workers (one per core by default) or, with ``isolation="process"``, in a worker of
their own. The pool remembers every spawn it sent to a worker; when the worker
dies (kill -9, segfault, MemoryError) or is killed by the watchdog because its
loop stayed blocked, the pool starts a new one and re-sends those spawns in
order: the agents come back from their last checkpoints (same SQLite store).
Worker restarts obey a restart intensity like any OTP supervisor.

Tenants (docs/security.md): each tenant's agents live in the tenant's own worker processes —
the default tenant's in the shared workers (``w0`` ...), another tenant's in one shared worker of
its own (``w@<tenant>``, started at its first spawn) and its ``isolation="process"`` workers
(``p<n>@<tenant>``) — so each tenant has its own supervision subtree (the roots of its workers),
its own checkpoint file, and names, child ids and groups of its own (:class:`TenantSpace`): a
name resolves only within the tenant that asks. A tenant's runaway agent can stall or crash only
its tenant's worker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agentd import frames
from agentd.errors import (
    AgentError,
    AlreadyExists,
    CallTimeout,
    InvalidArgument,
    NoSuchAgent,
    Unavailable,
    error_from_code,
)
from agentd.groups import GROUP_MODES
from agentd.ipc import Channel, read_frame
from agentd.process import TaskScope
from agentd.store import CheckpointStore
from agentd.supervision import ChildSpec, add_restart
from agentd.worker_handle import DEFAULT_TENANT, MeshBridge, TenantSpace, WorkerEvents, WorkerHandle

log = logging.getLogger("agentd.workers")

__all__ = ["MeshBridge", "TenantSpace", "WorkerEvents", "WorkerHandle", "WorkerPool"]


class WorkerPool:
    """Starts and supervises worker processes and routes requests to the agents they host.

    Every routing method takes the ``tenant`` it acts in (default: the default tenant) and only
    ever finds that tenant's agents (module docstring).
    """

    def __init__(self, config: dict[str, Any], *, workers: int | None = None, block_kill_s: float = 5.0,
                 max_restarts: int = 10, max_seconds: float = 60.0,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.shared_count = workers or os.cpu_count() or 1
        self.block_kill_s = block_kill_s
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.on_event = on_event
        self.workers: dict[str, WorkerHandle] = {}
        #: Each tenant's names, child ids and groups (the default tenant's are also ``names``, ``owner``, ``groups``).
        self.spaces: dict[str, TenantSpace] = {DEFAULT_TENANT: TenantSpace()}
        default = self.spaces[DEFAULT_TENANT]
        self.names, self.owner, self.groups = default.names, default.owner, default.groups
        #: Serialises the start of a tenant's own shared worker (its first spawns may race).
        self._tenant_starts: dict[str, asyncio.Lock] = {}
        self.events = WorkerEvents()
        self._rids = itertools.count(1)
        self._dedicated_ids = itertools.count(1)
        self._next_shared = 0
        self._scope = TaskScope()
        self._closing = False
        #: The mesh's hooks; None keeps every message on this host (see MeshBridge).
        self.mesh: MeshBridge | None = None
        #: Called with (tenant, agent id) when an agent is gone for good (agentd.quotas gives its unit back).
        self.on_removed: Callable[[str, str], None] | None = None
        #: Durable runs' effects from workers: (run_id, delivery id, op, args) -> answer (agentd.runs.executor).
        self.run_ops: Callable[[str, int, str, dict[str, Any]], Awaitable[dict[str, Any]]] | None = None
        from agentd.worker import build_registry

        #: The allow-list as the workers will load it (the same config builds both).
        self.allowed_types = set(build_registry(config).names())

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the shared workers and the watchdog; returns when every worker said hello."""
        if self.config.get("store_path"):
            CheckpointStore(self.config["store_path"]).close()  # creates the file in WAL mode once
        for index in range(self.shared_count):
            handle = WorkerHandle(f"w{index}", dedicated=False)
            self.workers[handle.worker_id] = handle
            await self._launch(handle)
        self._scope.start(self._watch_heartbeats())
        await asyncio.gather(*(self._wait_ready(h) for h in self.workers.values()))

    async def _wait_ready(self, handle: WorkerHandle, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await handle.ready.wait()

    async def close(self) -> None:
        """Shut every worker down (agents terminate in reverse order), then stop watching."""
        self._closing = True
        for handle in self.workers.values():
            handle.write(frames.Shutdown())
        for handle in list(self.workers.values()):
            if handle.process is not None:
                try:
                    async with asyncio.timeout(10):
                        await handle.process.wait()
                except TimeoutError:
                    handle.process.kill()
        await self._scope.aclose()
        for handle in self.workers.values():
            if handle.channel is not None:
                handle.channel.close()

    async def _launch(self, handle: WorkerHandle) -> None:
        """Start (or restart) the worker process behind a handle."""
        parent_sock, child_sock = socket.socketpair()
        watch_parent, watch_child = socket.socketpair()
        config = {**self.config, "worker_id": handle.worker_id, **self._tenant_config(handle.tenant)}
        handle.ready = asyncio.Event()
        handle.generation += 1
        handle.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentd.worker", "--fd", str(child_sock.fileno()),
            "--watchdog-fd", str(watch_child.fileno()), "--config", json.dumps(config),
            pass_fds=(child_sock.fileno(), watch_child.fileno()))
        child_sock.close()
        watch_child.close()
        generation = handle.generation
        # Frames are handled in the socket's readiness callback (agentd.ipc.Channel), not by a reader task.
        handle.channel = Channel(parent_sock, lambda frame: self._on_frame(handle, frame),
                                 lambda: self._channel_lost(handle, generation))
        handle.watchdog_sock = watch_parent
        handle.alive = True
        handle.pid = handle.process.pid
        handle.last_heartbeat = time.monotonic()
        self._scope.start(self._read_watchdog(handle, watch_parent))

    # --- reading from workers -----------------------------------------------------------------

    def _channel_lost(self, handle: WorkerHandle, generation: int) -> None:
        self._scope.start(self._worker_exited(handle, generation))

    async def _worker_exited(self, handle: WorkerHandle, generation: int) -> None:
        """One worker incarnation's channel ended: the worker died (or was shut down)."""
        process = handle.process
        if process is not None:
            code = await process.wait()
        else:
            code = None
        if handle.channel is not None:
            handle.channel.close()
        handle.alive = False
        error = Unavailable(f"worker {handle.worker_id} exited")
        for future, _, _ in handle.pending.values():
            if not future.done():
                future.set_exception(error)
        handle.pending.clear()
        space = self.space(handle.tenant)
        for name, agent_id in list(space.names.items()):
            if space.owner.get(agent_id.split("/", 1)[0]) == handle.worker_id:
                del space.names[name]
        worker_id = handle.worker_id
        for group in space.groups.remove_where(lambda member: member[0] == worker_id):
            if self.mesh is not None:
                self.mesh.group_left(group, handle.tenant)
        if handle.retired:
            self.workers.pop(handle.worker_id, None)
            return
        if self._closing or generation != handle.generation:
            return
        log.error("worker %s (pid %s) exited with %s; restarting it", handle.worker_id, handle.pid, code)
        await self._restart(handle)

    async def _restart(self, handle: WorkerHandle) -> None:
        ok, handle.restarts = add_restart(handle.restarts, time.monotonic(), self.max_restarts, self.max_seconds)
        if not ok:
            log.critical("worker %s restarted too often; giving up on it", handle.worker_id)
            self._emit("worker_gave_up", {"worker": handle.worker_id})
            return
        self.events.worker_restarts += 1
        await self._launch(handle)
        await self._wait_ready(handle)
        entries = list(handle.spawns.items())
        # Top-level agents are independent: pipeline their spawns (one IPC round trip each
        # would dominate recovery). Agents under a supervisor follow in order, after it exists.
        top = [(cid, spec) for cid, (spec, sup) in entries if sup is None]
        nested = [(cid, spec, sup) for cid, (spec, sup) in entries if sup is not None]
        for start in range(0, len(top), 512):
            chunk = top[start:start + 512]
            results = await asyncio.gather(
                *(self._request(handle, frames.Spawn(0, spec.model_dump(mode="json"), None), 60.0)
                  for _, spec in chunk), return_exceptions=True)
            for (child_id, _), result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("worker %s: could not bring back %s: %s", handle.worker_id, child_id, result)
        for child_id, spec, supervisor in nested:
            try:
                await self._request(handle, frames.Spawn(0, spec.model_dump(mode="json"), supervisor), 60.0)
            except AgentError as exc:
                log.error("worker %s: could not bring back %s: %s", handle.worker_id, child_id, exc)
        self._emit("worker_restarted", {"worker": handle.worker_id, "agents": len(handle.spawns)})

    def _on_frame(self, handle: WorkerHandle, frame: frames.Frame) -> None:
        match frame:
            case frames.Ok(rid=rid, value=value):
                entry = handle.pending.pop(rid, None)
                if entry is not None and not entry[0].done():
                    entry[0].set_result(value)
            case frames.Err(rid=rid, code=code, message=message):
                entry = handle.pending.pop(rid, None)
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(error_from_code(code, message))
            case frames.Stats(stats=stats):
                handle.stats = stats
                handle.last_heartbeat = time.monotonic()
            case frames.Hello(pid=pid):
                handle.pid = pid
                handle.last_heartbeat = time.monotonic()
                handle.ready.set()
            case frames.NameAdded(name=name, agent_id=agent_id):
                self.space(handle.tenant).names[name] = agent_id
                if self.mesh is not None:
                    self.mesh.name_registered(name, agent_id, handle.tenant)
            case frames.NameRemoved(name=name, agent_id=agent_id):
                names = self.space(handle.tenant).names
                if names.get(name) == agent_id:
                    del names[name]
                    if self.mesh is not None:
                        self.mesh.name_unregistered(name, agent_id, handle.tenant)
            case frames.Removed(agent_id=agent_id):
                self._forget(handle, agent_id)
            case frames.GroupJoined(group=group, agent_id=agent_id):
                groups = self.space(handle.tenant).groups
                if groups.join(group, (handle.worker_id, agent_id)) and groups.size(group) == 1:
                    if self.mesh is not None:
                        self.mesh.group_joined(group, handle.tenant)
            case frames.GroupLeft(group=group, agent_id=agent_id):
                groups = self.space(handle.tenant).groups
                if groups.leave(group, (handle.worker_id, agent_id)) and groups.size(group) == 0:
                    if self.mesh is not None:
                        self.mesh.group_left(group, handle.tenant)
            case frames.GroupCast(group=group, msg=msg, mode=mode, sender=sender):
                try:
                    self.send_group(group, msg, mode, sender=sender, tenant=handle.tenant)
                except AgentError as exc:
                    if sender:
                        handle.write(frames.CastFailed(sender, f"group:{group}", exc.code.name, exc.message))
            case frames.Cast(to=to, msg=msg, sender=sender):
                try:
                    self.cast_nowait(to, msg, sender=sender, origin=handle, tenant=handle.tenant)
                except AgentError as exc:
                    if sender:
                        handle.write(frames.CastFailed(sender, to, exc.code.name, exc.message))
            case frames.Call():
                self._scope.start(self._forward_call(handle, frame))
            case frames.RunOp():
                self._scope.start(self._run_op(handle, frame))
            case frames.CastFailed(sender=sender, to=to, code=code, message=message):
                self.delivery_failed(sender, to, code, message, handle.tenant)
            case _:
                log.error("worker %s sent %s, which only the main process sends: ignored", handle.worker_id,
                          frames.op_of(frame))

    def delivery_failed(self, sender: str, to: str, code: str, message: str, tenant: str = DEFAULT_TENANT) -> None:
        """Tell an agent of ``tenant`` here that its cast to ``to`` failed (a DeliveryFailed info message)."""
        target = self._worker_of(sender, tenant)
        if target is not None:
            target.write(frames.CastFailed(sender, to, code, message))

    def _forget(self, handle: WorkerHandle, agent_id: str) -> None:
        """An agent is gone for good: do not bring it back with its worker."""
        top, _, rest = agent_id.partition("/")
        handle.spawns.pop(agent_id, None)
        if self.on_removed is not None:
            self.on_removed(handle.tenant, agent_id)
        owner = self.space(handle.tenant).owner
        if not rest and owner.get(top) == handle.worker_id:
            del owner[top]
            if handle.dedicated and not handle.spawns:
                handle.retired = True
                handle.write(frames.Shutdown())

    async def _forward_call(self, origin: WorkerHandle, frame: frames.Call) -> None:
        try:
            result = await self.call(frame.to, frame.msg, timeout=float(frame.timeout), tenant=origin.tenant)
        except AgentError as exc:
            origin.write(frames.Err(frame.rid, exc.code.name, exc.message))
        else:
            origin.write(frames.Ok(frame.rid, result))

    async def _run_op(self, origin: WorkerHandle, frame: frames.RunOp) -> None:
        if self.run_ops is None:
            origin.write(frames.Ok(frame.rid, {"error": "RUNS_UNAVAILABLE", "message": "durable runs are not enabled"}))
            return
        try:
            answer = await self.run_ops(frame.run_id, frame.delivery_id, frame.name, frame.args)
        except Exception as exc:  # a bug must not leave the worker waiting: answer with the error
            log.exception("run-op %s of run %s failed", frame.name, frame.run_id)
            answer = {"error": "INTERNAL", "message": f"{type(exc).__name__}: {exc}"}
        origin.write(frames.Ok(frame.rid, answer))

    # --- durable runs: frames to a worker's run agents ---------------------------------------------

    def pick_run_worker(self) -> str:
        """The default tenant's shared worker with the fewest agents to host a run's agent."""
        shared = [h for h in self.workers.values() if not h.dedicated and h.tenant == DEFAULT_TENANT]
        return min(shared, key=lambda h: (len(h.spawns) + int(h.stats.get("runs", 0)), h.worker_id)).worker_id

    async def run_worker(self, tenant: str) -> str:
        """The worker to host a run's agent: the tenant's own (started if needed), or a default shared one."""
        if tenant == DEFAULT_TENANT:
            return self.pick_run_worker()
        return (await self.tenant_worker(tenant)).worker_id

    async def run_frame(self, worker_id: str, delivery: dict[str, Any]) -> dict[str, Any]:
        """Deliver one frame of a run to a worker and wait for its handling's outcome.

        Unavailable when the worker dies meanwhile (the executor delivers the frame again).
        """
        handle = self.workers.get(worker_id)
        if handle is None:
            raise Unavailable(f"no worker {worker_id}")
        # No deadline of ours: the executor bounds a frame's handling (cancel grace, interrupts).
        result: dict[str, Any] = await self._request(handle, frames.RunFrame(0, delivery), 10 * 365 * 86400.0)
        return result

    def run_signal(self, worker_id: str, run_id: str, delivery_id: int, kind: str) -> None:
        """Tell a worker's run agent to cancel ("cancel"), stop its handler ("interrupt") or go ("forget")."""
        handle = self.workers.get(worker_id)
        if handle is not None:
            handle.write(frames.RunSignal(run_id, delivery_id, kind))

    async def _read_watchdog(self, handle: WorkerHandle, sock: socket.socket) -> None:
        """frames.Blocked-loop reports from the worker's watchdog thread."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        try:
            while True:
                try:
                    frame = await read_frame(reader)
                except frames.MalformedFrame as exc:
                    log.error("watchdog of worker %s: %s: frame skipped", handle.worker_id, exc)
                    continue
                if frame is None:
                    return
                if isinstance(frame, frames.Blocked):
                    agent, seconds = frame.agent, float(frame.seconds)
                    self.events.blocked += 1
                    self.events.last_blocked_agent = agent
                    self.events.blocked_agents.append((handle.worker_id, agent, seconds))
                    log.warning("watchdog: worker %s loop blocked %.2f s by agent %s", handle.worker_id,
                                seconds, agent or "(none)")
                    self._emit("blocked", {"worker": handle.worker_id, "agent": agent, "seconds": seconds})
        finally:
            writer.close()

    async def _watch_heartbeats(self) -> None:
        """Kill a worker whose loop has not sent a heartbeat for ``block_kill_s`` (the death path restarts it)."""
        period = min(0.1, self.block_kill_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            self._expire_requests(now)
            for handle in list(self.workers.values()):
                if (handle.alive and handle.ready.is_set() and handle.process is not None
                        and now - handle.last_heartbeat > self.block_kill_s):
                    log.error("watchdog: worker %s silent for %.1f s (last blocked by %s): killing it",
                              handle.worker_id, now - handle.last_heartbeat, self.events.last_blocked_agent)
                    self.events.killed += 1
                    self._emit("killed", {"worker": handle.worker_id})
                    handle.alive = False
                    try:
                        os.kill(handle.process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _expire_requests(self, now: float) -> None:
        """Fail requests past their deadline with CallTimeout (swept with the heartbeat check, every <= 0.1 s).

        Replaces an ``asyncio.timeout`` per request (a Timeout object, a timer handle armed and
        cancelled per call: ~4 µs of each cross-process call in cProfile, ``python -m bench agents``,
        cross_process_calls_per_s). A deadline is a float stored with the request; expiry is late
        by at most one sweep period.
        """
        for handle in list(self.workers.values()):
            if not handle.pending:
                continue
            for future, deadline, timeout in list(handle.pending.values()):
                if deadline <= now and not future.done():
                    future.set_exception(CallTimeout(f"worker {handle.worker_id} did not answer within {timeout} s"))

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)

    # --- routing ------------------------------------------------------------------------------

    def space(self, tenant: str) -> TenantSpace:
        """A tenant's names, child ids and groups (created empty on first use)."""
        space = self.spaces.get(tenant)
        if space is None:
            space = self.spaces[tenant] = TenantSpace()
        return space

    def _worker_of(self, to: str, tenant: str = DEFAULT_TENANT) -> WorkerHandle | None:
        """The worker hosting an agent id or a registered name of ``tenant``."""
        space = self.spaces.get(tenant)
        if space is None:
            return None
        agent_id = space.names.get(to, to)
        worker_id = space.owner.get(agent_id.split("/", 1)[0])
        return None if worker_id is None else self.workers.get(worker_id)

    def resolve(self, to: str, tenant: str = DEFAULT_TENANT) -> str:
        """The agent id for a name or an id of ``tenant``."""
        space = self.spaces.get(tenant)
        return to if space is None else space.names.get(to, to)

    def _tenant_config(self, tenant: str) -> dict[str, Any]:
        """What a tenant's workers run with beyond the pool's config: their own checkpoint file."""
        if tenant == DEFAULT_TENANT or not self.config.get("store_path"):
            return {}
        base, dot, ext = str(self.config["store_path"]).rpartition(".")
        return {"store_path": f"{base}-{tenant}.{ext}" if dot else f"{ext}-{tenant}"}

    async def tenant_worker(self, tenant: str) -> WorkerHandle:
        """The shared worker of a tenant other than the default one, started at its first use."""
        worker_id = f"w@{tenant}"
        handle = self.workers.get(worker_id)
        if handle is not None:
            return handle
        lock = self._tenant_starts.setdefault(tenant, asyncio.Lock())
        async with lock:
            handle = self.workers.get(worker_id)
            if handle is None:
                handle = WorkerHandle(worker_id, dedicated=False, tenant=tenant)
                store = self._tenant_config(tenant).get("store_path")
                if store:
                    CheckpointStore(store).close()  # creates the tenant's file in WAL mode once
                self.workers[worker_id] = handle
                await self._launch(handle)
                await self._wait_ready(handle)
        return handle

    async def _request(self, handle: WorkerHandle, frame: frames.Spawn | frames.Stop | frames.Cast | frames.Call
                       | frames.Info | frames.ListAgents | frames.Tree | frames.RunFrame, timeout: float) -> Any:
        """Send ``frame`` to the worker under a fresh ``rid``; its Ok's value, or its Err raised."""
        if not handle.alive:
            await self._wait_ready(handle, timeout)
        rid = next(self._rids)
        frame = frames.with_rid(frame, rid)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = handle.pending
        # The deadline is swept by _expire_requests, not a timer per call (bench agents, cross_process_calls_per_s).
        pending[rid] = (future, time.monotonic() + timeout, timeout)
        try:
            handle.write(frame)
            return await future
        finally:
            pending.pop(rid, None)

    def hosts(self, to: str, tenant: str = DEFAULT_TENANT) -> bool:
        """True when a worker of this pool hosts the agent (name or id) `to` of ``tenant``."""
        return self._worker_of(to, tenant) is not None

    def _target(self, to: str, tenant: str = DEFAULT_TENANT) -> WorkerHandle:
        handle = self._worker_of(to, tenant)
        if handle is None:
            raise NoSuchAgent(f"no agent {to}")
        return handle

    async def call(self, to: str, msg: Any, timeout: float = 5.0, tenant: str = DEFAULT_TENANT) -> Any:
        """frames.Call an agent in whichever worker hosts it (or through the mesh when none here does)."""
        handle = self._worker_of(to, tenant)
        if handle is None:
            if self.mesh is not None:
                return await self.mesh.call(to, msg, timeout, tenant)
            raise NoSuchAgent(f"no agent {to}")
        return await self._request(handle, frames.Call(0, self.resolve(to, tenant), msg, timeout), timeout + 1.0)

    async def cast(self, to: str, msg: Any, tenant: str = DEFAULT_TENANT) -> None:
        """frames.Cast with acknowledgement: MailboxFull / NoSuchAgent come back as errors.

        For an agent on another node the acknowledgement is that the mesh took it (casts are one-way there).
        """
        if self.mesh is not None and self._worker_of(to, tenant) is None:
            self.mesh.cast(to, msg, None, tenant)
            return
        await self._request(self._target(to, tenant), frames.Cast(0, self.resolve(to, tenant), msg, None), 10.0)

    def cast_nowait(self, to: str, msg: Any, sender: str | None = None, origin: WorkerHandle | None = None,
                    tenant: str = DEFAULT_TENANT) -> None:
        """Forward a cast without waiting; failures go back to ``sender`` as DeliveryFailed."""
        if self.mesh is not None and self._worker_of(to, tenant) is None:
            self.mesh.cast(to, msg, sender, tenant)
            return
        handle = self._target(to, tenant)
        handle.write(frames.Cast(0, self.resolve(to, tenant), msg, sender))

    # --- process groups ------------------------------------------------------------------------

    def group_members(self, group: str, tenant: str = DEFAULT_TENANT) -> list[str]:
        """The agent ids of this agentd's members of ``group`` (sorted by worker, then agent id)."""
        return [agent_id for _, agent_id in self.space(tenant).groups.members(group)]

    def send_group(self, group: str, msg: Any, mode: str = "all", sender: str | None = None,
                   tenant: str = DEFAULT_TENANT) -> int:
        """frames.Cast to a group: local members directly, remote ones through the mesh; returns local deliveries.

        ``all``: every member here, and a copy to every other agentd in meshd's group.
        ``one``: with a mesh, meshd picks the agentd (round-robin over the group's nodes) and
        that agentd picks one of its members; without one, the next member here in turn.
        NoSuchAgent when nobody can be reached (no members here and no mesh). A member's
        full mailbox comes back to ``sender`` as DeliveryFailed.
        """
        if mode not in GROUP_MODES:
            raise InvalidArgument(f"mode: {mode!r} is not one of {GROUP_MODES}")
        if self.mesh is not None and mode == "one":
            self.mesh.send_group(group, msg, mode, sender, tenant)
            return 0
        try:
            delivered = self.deliver_group(group, msg, mode, sender, tenant)
        except NoSuchAgent:
            if self.mesh is None:
                raise
            delivered = 0
        if self.mesh is not None:
            self.mesh.send_group(group, msg, mode, sender, tenant)
        return delivered

    def deliver_group(self, group: str, msg: Any, mode: str, sender: str | None = None,
                      tenant: str = DEFAULT_TENANT) -> int:
        """Deliver a group cast to this agentd's members only (the mesh's inbound path); returns how many."""
        groups = self.space(tenant).groups
        if mode == "one":
            picked = groups.pick(group)
            targets = [] if picked is None else [picked]
        else:
            targets = groups.members(group)
        delivered = 0
        for worker_id, agent_id in targets:
            handle = self.workers.get(worker_id)
            if handle is not None and handle.alive:
                handle.write(frames.Cast(0, agent_id, msg, sender))
                delivered += 1
        if not delivered:
            raise NoSuchAgent(f"no members in group {group!r} on this node")
        return delivered

    async def spawn(self, spec: ChildSpec, supervisor: str | None = None, tenant: str = DEFAULT_TENANT) -> str:
        """Start an agent of ``tenant`` in a worker: its supervisor's, a dedicated one, or a shared one
        (the least loaded default worker, or the tenant's own)."""
        space = self.space(tenant)
        if spec.name is not None and spec.name in space.names:
            raise AlreadyExists(f"name {spec.name!r} is registered by {space.names[spec.name]}")
        if supervisor:
            handle = self._target(supervisor, tenant)
            supervisor = self.resolve(supervisor, tenant)
        elif spec.isolation == "process":
            if spec.id in space.owner:
                raise AlreadyExists(f"child id {spec.id!r} already exists")
            suffix = "" if tenant == DEFAULT_TENANT else f"@{tenant}"
            handle = WorkerHandle(f"p{next(self._dedicated_ids)}{suffix}", dedicated=True, tenant=tenant)
            self.workers[handle.worker_id] = handle
            await self._launch(handle)
            await self._wait_ready(handle)
        else:
            if spec.id in space.owner:
                raise AlreadyExists(f"child id {spec.id!r} already exists")
            if tenant == DEFAULT_TENANT:
                shared = [h for h in self.workers.values() if not h.dedicated and h.tenant == DEFAULT_TENANT]
                handle = min(shared, key=lambda h: (len(h.spawns), h.worker_id))
            else:
                handle = await self.tenant_worker(tenant)
        agent_id: str = await self._request(handle, frames.Spawn(0, spec.model_dump(mode="json"), supervisor), 60.0)
        if not supervisor:
            space.owner[spec.id] = handle.worker_id
        handle.spawns[agent_id] = (spec, supervisor)
        return agent_id

    async def stop_agent(self, to: str, tenant: str = DEFAULT_TENANT) -> None:
        """frames.Stop an agent for good (through its supervisor)."""
        handle = self._target(to, tenant)
        await self._request(handle, frames.Stop(0, self.resolve(to, tenant)), 120.0)

    async def info(self, to: str, tenant: str = DEFAULT_TENANT) -> dict[str, Any]:
        """One agent's snapshot."""
        handle = self._target(to, tenant)
        result: dict[str, Any] = await self._request(handle, frames.Info(0, self.resolve(to, tenant)), 10.0)
        result["worker"] = handle.worker_id
        result["tenant"] = handle.tenant
        return result

    def _workers_of(self, tenant: str) -> list[WorkerHandle]:
        return [h for h in list(self.workers.values()) if h.alive and h.tenant == tenant]

    async def list_agents(self, tenant: str = DEFAULT_TENANT) -> list[dict[str, Any]]:
        """Every agent of ``tenant`` in every live worker."""
        out: list[dict[str, Any]] = []
        for handle in self._workers_of(tenant):
            for info in await self._request(handle, frames.ListAgents(0), 30.0):
                info["worker"] = handle.worker_id
                info["tenant"] = handle.tenant
                out.append(info)
        return out

    async def tree(self, root: str | None = None, tenant: str = DEFAULT_TENANT) -> list[dict[str, Any]]:
        """The supervision tree of each of ``tenant``'s workers (or of one supervisor): the tenant's subtree."""
        if root:
            handle = self._target(root, tenant)
            return [{"worker": handle.worker_id, "tenant": handle.tenant,
                     **(await self._request(handle, frames.Tree(0, self.resolve(root, tenant)), 30.0))}]
        trees = []
        for handle in self._workers_of(tenant):
            trees.append({"worker": handle.worker_id, "tenant": handle.tenant,
                          **(await self._request(handle, frames.Tree(0, None), 30.0))})
        return trees

    def next_serial(self) -> int:
        """A fresh number for generated child ids."""
        return next(self._rids)

    def check_type(self, agent_type: str) -> None:
        """InvalidArgument unless the type is on the allow-list (checked before any worker is involved)."""
        if agent_type not in self.allowed_types:
            raise InvalidArgument(f"unknown agent type {agent_type!r}; allowed: {sorted(self.allowed_types)}")

    def kill_worker(self, worker_id: str) -> int:
        """kill -9 a worker (tests, chaos); returns its pid."""
        handle = self.workers[worker_id]
        os.kill(handle.pid, signal.SIGKILL)
        return handle.pid
