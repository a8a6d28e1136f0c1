"""Supervisors as agents: the async shell that performs the pure core's decisions (agentd.supervision).

``Supervisor`` has a static list of children (data: :class:`~agentd.supervision.ChildSpec`)
started in order and stopped in reverse order, restarted by its strategy.
``DynamicSupervisor`` starts children on request (one_for_one), as Elixir's does.
Both give up when restarts come faster than their intensity allows: they stop
their children and exit with reason ``shutdown:reached_max_restart_intensity``,
which their own supervisor sees as one more child exit (escalation).

Start arguments of the ``supervisor`` type::

    {"strategy": "one_for_all", "max_restarts": 3, "max_seconds": 5,
     "children": [{"id": "db", "start": {"type": "store"}}, ...]}
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import ValidationError

from agentd.behaviour import Agent, AgentRef
from agentd.errors import AgentExited, AlreadyExists, InvalidArgument, MailboxFull, NoSuchAgent
from agentd.process import SHUTDOWN, AgentProcess, TaskScope
from agentd.supervision import (
    KILLED,
    REACHED_MAX_RESTART_INTENSITY,
    ChildSpec,
    Decision,
    GiveUp,
    StartChildren,
    StartSpec,
    StopChildren,
    SupervisorFlags,
    SupervisorState,
    add_child,
    delete_child,
    dynamic_exit,
    initial_state,
    on_child_exit,
    replace_spec,
    shutdown,
    start_all,
    start_failed,
    terminate_child,
)

SHUTDOWN_REASON = "shutdown"

log = logging.getLogger("agentd.supervisor")


class _SupervisorBase(Agent):
    """What both supervisors share: starting, restarting (with the restart policy) and stopping children."""

    handle_timeout = None
    trap_exits = True
    is_supervisor = True

    def __init__(self) -> None:
        self.procs: dict[str, AgentProcess] = {}
        self.attempts: dict[str, int] = {}
        self.scope = TaskScope()

    @property
    def proc(self) -> AgentProcess:
        """This supervisor's own process."""
        return self.ctx  # type: ignore[return-value]

    def _child_agent_id(self, child_id: str) -> str:
        own = self.proc.agent_id
        return child_id if own == "root" else f"{own}/{child_id}"

    def _restart_spec(self, spec: ChildSpec, last_reason: str) -> ChildSpec:
        """Count the restart and let the restart policies change the start arguments."""
        attempt = self.attempts.get(spec.id, 0) + 1
        self.attempts[spec.id] = attempt
        runtime = self.proc.runtime
        runtime.record_restart(last_reason)
        new_args = None
        if runtime.restart_policy is not None:
            new_args = runtime.restart_policy(spec, attempt, last_reason)
        if new_args is None:
            new_args = runtime.registry.get(spec.start.type).restart_policy(spec, attempt, last_reason)
        if new_args is not None:
            log.info("restart policy: %s restart %d with new args", spec.id, attempt)
            spec = spec.model_copy(update={"start": StartSpec(type=spec.start.type, args=new_args)})
        return spec

    async def _start(self, spec: ChildSpec, last_error: str = "") -> AgentProcess:
        """Start one child and wait for its init; AgentExited (with the reason) when it fails."""
        runtime = self.proc.runtime
        proc = runtime.start_process(self._child_agent_id(spec.id), spec, self.proc, self.scope,
                                     restart_count=self.attempts.get(spec.id, 0), last_error=last_error)
        self.procs[spec.id] = proc
        try:
            await proc.started
        except AgentExited:
            self.procs.pop(spec.id, None)
            await proc.wait()
            raise
        return proc

    async def _stop(self, proc: AgentProcess) -> None:
        """Stop one child: shutdown then wait its timeout, or brutal_kill; the child's exit is not a crash."""
        proc.parent_stopping = True
        if proc.done:
            await proc.wait()
            return
        timeout = proc.spec.shutdown
        if timeout == "brutal_kill":
            proc.kill(KILLED)
        else:
            proc.mailbox.put_system((SHUTDOWN, SHUTDOWN_REASON, None))
            if not await proc.wait(float(timeout)):
                log.warning("child %s did not stop within %s s: killed", proc.agent_id, timeout)
                proc.kill(KILLED)
        await proc.wait()

    async def _stop_many(self, procs: list[AgentProcess]) -> None:
        """Stop children concurrently: shutdown to all, wait up to each timeout, kill the rest."""
        waits: list[asyncio.Task[Any]] = []
        for proc in procs:
            proc.parent_stopping = True
            if proc.spec.shutdown == "brutal_kill":
                proc.kill(KILLED)
            elif not proc.done:
                proc.mailbox.put_system((SHUTDOWN, SHUTDOWN_REASON, None))
            if proc.task is not None and not proc.task.done():
                waits.append(proc.task)
        if not waits:
            return
        longest = max((p.spec.shutdown for p in procs if p.spec.shutdown != "brutal_kill"), default=0.0)
        _, pending = await asyncio.wait(waits, timeout=float(longest))
        for proc in procs:
            if proc.task in pending:
                proc.kill(KILLED)
        if pending:
            await asyncio.wait(pending)

    async def terminate(self, reason: str, state: Any) -> None:
        """Stop every child (subclasses decide the order), then close the task scope."""
        await self._stop_all()
        await self.scope.aclose()

    async def _stop_all(self) -> None:
        raise NotImplementedError

    def child_processes(self) -> list[AgentProcess]:
        """The running children in start order (for the tree view)."""
        return list(self.procs.values())

    def _flags(self, args: dict[str, Any]) -> SupervisorFlags:
        try:
            return SupervisorFlags.model_validate({k: v for k, v in args.items()
                                                   if k in ("strategy", "max_restarts", "max_seconds")})
        except ValidationError as exc:
            raise InvalidArgument(f"invalid supervisor flags: {exc}") from None


class Supervisor(_SupervisorBase):
    """A supervisor with a static, ordered list of children and a strategy."""

    async def init(self, args: dict[str, Any]) -> Any:
        """Validate flags and child specs, then start the children in order (all or none)."""
        flags = self._flags(args)
        self.strategy_name = flags.strategy.value
        try:
            children = [ChildSpec.model_validate(child) for child in args.get("children", [])]
            self.core: SupervisorState = initial_state(flags, children)
        except (ValidationError, ValueError) as exc:
            raise InvalidArgument(f"invalid child specs: {exc}") from None
        decision = start_all(self.core)
        self.core = decision.state
        for action in decision.actions:
            assert isinstance(action, StartChildren)
            for child_id in action.ids:
                spec = self.core.child(child_id)
                assert spec is not None
                try:
                    await self._start(spec)
                except AgentExited:
                    # OTP: a child failing at supervisor start stops the ones started, in reverse order.
                    await self._stop_all()
                    raise
        return {}

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        """start_child / terminate_child / which_children requests."""
        op = msg[0]
        if op == "start_child":
            spec: ChildSpec = msg[1]
            try:
                decision = add_child(self.core, spec)
            except ValueError as exc:
                raise AlreadyExists(str(exc)) from None
            self.core = decision.state
            try:
                proc = await self._start(spec)
            except AgentExited as exc:
                self.core = delete_child(start_failed(self.core, [spec.id]), spec.id)
                raise InvalidArgument(f"agent {spec.id} failed to start: {exc.exit_reason}") from None
            return proc.self_ref, state
        if op == "terminate_child":
            child_id = msg[1]
            if self.core.child(child_id) is None:
                raise NoSuchAgent(f"no child {child_id} under {self.proc.agent_id}")
            await self._apply(terminate_child(self.core, child_id))
            if self.core.child(child_id) is not None:
                self.core = delete_child(self.core, child_id)
            self.proc.runtime.delete_checkpoint(self._child_agent_id(child_id))
            return None, state
        if op == "which_children":
            return [(s.id, s.id in self.procs) for s in self.core.children], state
        raise InvalidArgument(f"unknown supervisor request {op!r}")

    async def on_child_exit(self, proc: AgentProcess, reason: str) -> None:
        """A child exited on its own: apply the strategy's decision."""
        child_id = proc.spec.id
        if self.procs.get(child_id) is not proc:
            return
        del self.procs[child_id]
        await self._apply(on_child_exit(self.core, child_id, reason, self.proc.runtime.clock()), reason)

    async def _apply(self, decision: Decision, reason: str = SHUTDOWN_REASON) -> None:
        """Perform the core's actions in order; a failed restart is fed back as that child's exit."""
        runtime = self.proc.runtime
        before = {s.id for s in self.core.children}
        self.core = decision.state
        for action in decision.actions:
            if isinstance(action, StopChildren):
                for child_id in action.ids:
                    child = self.procs.pop(child_id, None)
                    if child is not None:
                        await self._stop(child)
            elif isinstance(action, StartChildren):
                for index, child_id in enumerate(action.ids):
                    spec = self.core.child(child_id)
                    assert spec is not None
                    spec = self._restart_spec(spec, reason)
                    self.core = replace_spec(self.core, spec)
                    try:
                        await self._start(spec, last_error=reason)
                    except AgentExited as exc:
                        self.core = start_failed(self.core, action.ids[index + 1:])
                        await self._apply(on_child_exit(self.core, child_id, exc.exit_reason, runtime.clock()),
                                          exc.exit_reason)
                        return
            elif isinstance(action, GiveUp):
                log.error("supervisor %s gave up: restart intensity exceeded", self.proc.agent_id)
                for child_id in action.stop_ids:
                    child = self.procs.pop(child_id, None)
                    if child is not None:
                        await self._stop(child)
                self.proc.stop(action.reason)
        for gone in before - {s.id for s in self.core.children}:
            runtime.delete_checkpoint(self._child_agent_id(gone))

    async def _stop_all(self) -> None:
        decision = shutdown(self.core)
        self.core = decision.state
        for action in decision.actions:
            assert isinstance(action, StopChildren)
            for child_id in action.ids:
                child = self.procs.pop(child_id, None)
                if child is not None:
                    await self._stop(child)
        for child in list(self.procs.values()):  # started during a failed init
            await self._stop(child)
        self.procs.clear()

    def child_processes(self) -> list[AgentProcess]:
        """The running children in start order."""
        return [self.procs[s.id] for s in self.core.children if s.id in self.procs]


class DynamicSupervisor(_SupervisorBase):
    """Children started on request, restarted one_for_one; those not restarted are removed."""

    strategy_name = "one_for_one"

    async def init(self, args: dict[str, Any]) -> Any:
        """Flags (max_restarts, max_seconds) and an optional ``max_children``."""
        self.flags = self._flags(args)
        self.max_children: int | None = args.get("max_children")
        self.children: dict[str, ChildSpec] = {}
        self.restarts: tuple[float, ...] = ()
        return {}

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        """start_child / terminate_child / which_children requests."""
        op = msg[0]
        if op == "start_child":
            spec: ChildSpec = msg[1]
            if spec.id in self.children:
                raise AlreadyExists(f"child id {spec.id!r} already exists under {self.proc.agent_id}")
            if self.max_children is not None and len(self.children) >= self.max_children:
                raise MailboxFull(f"{self.proc.agent_id} has its maximum of {self.max_children} children")
            self.children[spec.id] = spec
            try:
                proc = await self._start(spec)
            except AgentExited as exc:
                del self.children[spec.id]
                raise InvalidArgument(f"agent {spec.id} failed to start: {exc.exit_reason}") from None
            return AgentRef(proc.agent_id, proc.runtime.node_id), state
        if op == "terminate_child":
            child_id = msg[1]
            if self.children.pop(child_id, None) is None:
                raise NoSuchAgent(f"no child {child_id} under {self.proc.agent_id}")
            child = self.procs.pop(child_id, None)
            if child is not None:
                await self._stop(child)
            self.proc.runtime.delete_checkpoint(self._child_agent_id(child_id))
            return None, state
        if op == "which_children":
            return [(cid, cid in self.procs) for cid in self.children], state
        raise InvalidArgument(f"unknown supervisor request {op!r}")

    async def on_child_exit(self, proc: AgentProcess, reason: str) -> None:
        """One child exited: restart it, remove it, or give up (intensity exceeded)."""
        child_id = proc.spec.id
        if self.procs.get(child_id) is not proc:
            return
        del self.procs[child_id]
        runtime = self.proc.runtime
        while True:
            spec = self.children[child_id]
            verdict, self.restarts = dynamic_exit(spec.restart, reason, self.restarts, runtime.clock(), self.flags)
            if verdict == "remove":
                del self.children[child_id]
                runtime.delete_checkpoint(self._child_agent_id(child_id))
                return
            if verdict == "give_up":
                log.error("supervisor %s gave up: restart intensity exceeded", self.proc.agent_id)
                self.proc.stop(REACHED_MAX_RESTART_INTENSITY)
                return
            spec = self._restart_spec(spec, reason)
            self.children[child_id] = spec
            try:
                await self._start(spec, last_error=reason)
                return
            except AgentExited as exc:
                reason = exc.exit_reason

    async def _stop_all(self) -> None:
        procs = list(self.procs.values())
        self.procs.clear()
        await self._stop_many(procs[::-1])
