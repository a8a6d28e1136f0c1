"""One running agent: its mailbox, its loop (one message at a time) and how it ends.

An :class:`AgentProcess` is one incarnation of an agent (a restart makes a new one
with the same stable ``agent_id``). It is also the agent's :class:`~agentd.behaviour.Context`.
Its task is owned by its supervisor's :class:`TaskScope`; nothing here is
fire-and-forget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from agentd.behaviour import Agent, AgentRef, Down, Exit, TimerRef
from agentd.codec import restore
from agentd.errors import AgentError, AgentExited, CallTimeout
from agentd.mailbox import Mailbox, MailboxStatistics
from agentd.supervision import KILLED, NORMAL, TIMEOUT, ChildSpec, is_normal_exit

if TYPE_CHECKING:
    from agentd.runtime import Runtime

log = logging.getLogger("agentd.process")

# Message kinds: the first element of every mailbox tuple (kind, payload, reply_to).
CAST, CALL, INFO, SHUTDOWN, CHILD_EXIT, CODE_CHANGE = range(6)


class TaskScope:
    """Owns tasks: every task started here is awaited or cancelled by :meth:`aclose` (structured concurrency)."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Any) -> asyncio.Task[Any]:
        """Run a coroutine as a task owned by this scope; it leaves the scope when it ends."""
        task = asyncio.get_running_loop().create_task(self._owned(coro))
        self._tasks.add(task)
        return task

    def start_agent(self, proc: AgentProcess) -> asyncio.Task[None]:
        """Run an agent's loop as a task of this scope; ``AgentProcess.run`` leaves the scope itself.

        No done callback and no wrapper: ``add_done_callback`` cost about 5 us per task here,
        a quarter of a spawn (``python -m bench agents``, spawn_per_s).
        """
        task = asyncio.get_running_loop().create_task(proc.run())
        self._tasks.add(task)
        return task

    async def _owned(self, coro: Any) -> Any:
        try:
            return await coro
        finally:
            self._tasks.discard(asyncio.current_task())

    def discard(self, task: asyncio.Task[Any] | None) -> None:
        """Forget a task that ended."""
        if task is not None:
            self._tasks.discard(task)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel every task still running and wait for all of them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def error_reason(exc: BaseException) -> str:
    """The exit reason for an exception raised by a callback."""
    return f"error: {type(exc).__name__}: {exc}"


class AgentProcess:
    """One incarnation of an agent, and the agent's context (``self.ctx``)."""

    __slots__ = ("runtime", "agent_id", "spec", "agent", "mailbox", "parent", "task", "restart_count",
                 "handle_timeout", "status", "exit_reason", "last_error", "started", "kill_reason",
                 "parent_stopping", "_stop_reason", "_timers", "_monitors", "_links", "_current_reply",
                 "_finished", "handled", "busy_seconds", "started_at", "checkpoint_version", "scope",
                 "state", "owner_scope", "_running", "_deadline", "_deadline_timer", "_timed_out")

    def __init__(self, runtime: Runtime, agent_id: str, spec: ChildSpec, agent: Agent,
                 parent: AgentProcess | None, restart_count: int = 0, last_error: str = "") -> None:
        self.runtime = runtime
        self.agent_id = agent_id
        self.spec = spec
        self.agent = agent
        capacity = spec.mailbox_capacity or agent.mailbox_capacity or runtime.mailbox_capacity
        if spec.mailbox_bound and not spec.mailbox_capacity:  # a default over the tenant's max_mailbox is lowered
            capacity = min(capacity, spec.mailbox_bound)
        self.mailbox = Mailbox(capacity, agent_id)
        self.parent = parent
        self.task: asyncio.Task[None] | None = None
        self.restart_count = restart_count
        self.handle_timeout = agent.handle_timeout
        self.status = "starting"
        self.exit_reason: str | None = None
        self.last_error = last_error
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.kill_reason: str | None = None
        self.parent_stopping = False
        self._stop_reason: str | None = None
        self._timers: dict[int, asyncio.TimerHandle] | None = None
        self._monitors: dict[int, AgentProcess] | None = None  # monitor id -> watcher
        self._links: set[AgentProcess] | None = None
        self._current_reply: Any = None
        self._finished = False
        self.handled = 0
        self.busy_seconds = 0.0
        self.started_at = time.time()
        self.checkpoint_version = 0
        self.scope: TaskScope | None = None  # children's tasks, for supervisors
        self.state: Any = None
        self.owner_scope: TaskScope | None = None
        self._running = False
        self._deadline = 0.0  # perf_counter deadline of the callback running now; 0.0: none
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._timed_out = False
        agent.ctx = self

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """The agent's life: init (or restore), then one message at a time until it exits."""
        reason = NORMAL
        mailbox = self.mailbox
        runtime = self.runtime
        state: Any = None
        self._running = True
        try:
            try:
                if self.handle_timeout is None:
                    state = await self._init()
                else:
                    async with asyncio.timeout(self.handle_timeout):
                        state = await self._init()
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                reason = TIMEOUT
                self.started.set_exception(AgentExited(f"{self.agent_id}: init took longer than "
                                                       f"{self.handle_timeout} s", reason))
                self.started.exception()
                return
            except BaseException as exc:
                reason = error_reason(exc)
                self.started.set_exception(AgentExited(f"{self.agent_id} failed to start: {exc}", reason))
                self.started.exception()  # retrieved: the supervisor reads it
                return
            self.state = state
            self.status = "running"
            self.started.set_result(None)
            timeout = self.handle_timeout
            clock = time.perf_counter
            while True:
                item = mailbox.get_nowait()
                if item is None:
                    self.status = "idle"
                    item = await mailbox.get()
                    self.status = "running"
                runtime.current_agent = self.agent_id
                began = clock()
                if timeout is None or item[0] >= SHUTDOWN:
                    state = await self._dispatch(item, state)
                else:
                    # A deadline per message is a float; one lazily re-armed timer per agent enforces it
                    # (an asyncio.timeout per message armed and cancelled a timer each time: ~3 µs of a
                    # cross-process call, python -m bench agents, cross_process_calls_per_s).
                    self._deadline = began + timeout
                    if self._deadline_timer is None:
                        self._deadline_timer = asyncio.get_running_loop().call_later(timeout, self._check_deadline)
                    state = await self._dispatch(item, state)
                    self._deadline = 0.0
                    if self._timed_out:  # the callback swallowed the cancellation: still a timeout
                        reason = TIMEOUT
                        log.warning("agent %s killed: a callback took longer than %s s", self.agent_id, timeout)
                        return
                elapsed = clock() - began
                runtime.current_agent = None
                self.handled += 1
                self.busy_seconds += elapsed
                runtime.observe_handling(elapsed)
                self.state = state
                if self._stop_reason is not None:
                    reason = self._stop_reason
                    await self._terminate(reason, state)
                    return
        except asyncio.CancelledError:
            if self.kill_reason is not None:
                reason = self.kill_reason
            elif self._timed_out:
                reason = TIMEOUT
                log.warning("agent %s killed: a callback took longer than %s s", self.agent_id, self.handle_timeout)
            else:
                self._finish(KILLED)
                raise
        except Exception as exc:
            reason = error_reason(exc)
            log.warning("agent %s crashed: %s", self.agent_id, reason)
            await self._terminate(reason, state)
        finally:
            if runtime.current_agent == self.agent_id:
                runtime.current_agent = None
            self._finish(reason)
            if self.owner_scope is not None:
                self.owner_scope.discard(self.task)

    def _check_deadline(self) -> None:
        """The deadline timer fired: cancel an overrunning callback, or re-arm for the current one.

        Deadlines only move later (each is its message's start + ``handle_timeout``), so the
        timer armed for an earlier message fires early and re-arms; an idle agent lets it lapse.
        """
        self._deadline_timer = None
        deadline = self._deadline
        if not deadline or self._finished or self.task is None:
            return
        left = deadline - time.perf_counter()
        if left > 0:
            self._deadline_timer = asyncio.get_running_loop().call_later(max(left, 0.001), self._check_deadline)
            return
        self._timed_out = True
        self.task.cancel()

    async def _init(self) -> Any:
        """``restore`` from the last checkpoint when there is one, ``init`` otherwise."""
        saved = self.runtime.load_checkpoint(self.agent_id)
        args = dict(self.spec.start.args)
        if saved is not None:
            value, version = saved
            self.checkpoint_version = version
            return await self.agent.restore(args, restore(value, self.agent.state_model))
        return await self.agent.init(args)

    async def _dispatch(self, item: tuple[int, Any, Any], state: Any) -> Any:
        """Run the callback for one message; returns the new state."""
        kind, payload, reply_to = item
        agent = self.agent
        if kind == CAST:
            return await agent.handle_cast(payload, state)
        if kind == CALL:
            self._current_reply = reply_to
            try:
                reply, state = await agent.handle_call(payload, state)
            except AgentError as exc:
                # A typed error is a deliberate error reply, not a crash.
                if not reply_to.done():
                    reply_to.set_exception(exc)
                self._current_reply = None
                return state
            self._current_reply = None
            if not reply_to.done():
                reply_to.set_result(reply)
            return state
        if kind == INFO:
            return await agent.handle_info(payload, state)
        if kind == SHUTDOWN:
            self._stop_reason = payload
            return state
        if kind == CHILD_EXIT:
            child, reason = payload
            await agent.on_child_exit(child, reason)  # type: ignore[attr-defined]
            return state
        if kind == CODE_CHANGE:
            return await agent.code_change(state, payload)
        raise ValueError(f"unknown message kind {kind}")

    async def _terminate(self, reason: str, state: Any) -> None:
        """Call ``terminate``; its own failure is logged, never raised."""
        self.status = "terminating"
        try:
            await self.agent.terminate(reason, state)
        except Exception as exc:  # a failing terminate must not hide the exit reason
            log.warning("agent %s: terminate raised %s", self.agent_id, error_reason(exc))

    def _finish(self, reason: str) -> None:
        """Exit bookkeeping: fail pending calls, fire monitors and links, tell the parent."""
        if self._finished:
            return
        self._finished = True
        self.status = "exited"
        self.exit_reason = reason
        if not self.started.done():
            self.started.set_exception(AgentExited(f"{self.agent_id} exited during start: {reason}", reason))
            self.started.exception()
        error = AgentExited(f"agent {self.agent_id} exited: {reason}", reason)
        pending = [self._current_reply] if self._current_reply is not None else []
        pending += [item[2] for item in self.mailbox.drain() if item[0] == CALL]
        for reply_to in pending:
            if not reply_to.done():
                reply_to.set_exception(error)
        if self._timers:
            for handle in self._timers.values():
                handle.cancel()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self.runtime.unregister(self)
        ref = self.self_ref
        if self._monitors:
            for monitor_id, watcher in self._monitors.items():
                watcher.mailbox.put_system((INFO, Down(monitor_id, ref, reason), None))
        if self._links:
            for other in self._links:
                if other._links:
                    other._links.discard(self)
                if other.agent.trap_exits:
                    other.mailbox.put_system((INFO, Exit(ref, reason), None))
                elif not is_normal_exit(reason):
                    other.kill(reason)
        if self.parent is not None and not self.parent_stopping:
            self.parent.mailbox.put_system((CHILD_EXIT, (self, reason), None))


    # --- control from the runtime and supervisors -------------------------------------------

    def kill(self, reason: str = KILLED) -> None:
        """Cancel the agent's task now (no ``terminate``): brutal_kill, shutdown timeout, linked exit."""
        if self._finished or self.task is None:
            return
        if self.kill_reason is None:
            self.kill_reason = reason
        self.task.cancel()
        if not self._running:
            # Cancelled before its first step, ``run`` will never execute: finish here.
            self._finish(self.kill_reason)
            if self.owner_scope is not None:
                self.owner_scope.discard(self.task)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the task to end without cancelling it; False on timeout."""
        if self.task is None or self.task.done():
            return True
        done, _ = await asyncio.wait({self.task}, timeout=timeout)
        return bool(done)

    @property
    def done(self) -> bool:
        """True once the agent exited."""
        return self._finished

    # --- the Context --------------------------------------------------------------------------

    @property
    def self_ref(self) -> AgentRef:
        """This agent's address."""
        return AgentRef(self.agent_id, self.runtime.node_id)

    @property
    def name(self) -> str | None:
        """This agent's registered name."""
        return self.spec.name

    @property
    def restarts(self) -> int:
        """How many times this agent has been restarted."""
        return self.restart_count

    def send(self, to: AgentRef | str, msg: Any) -> None:
        """Cast to an agent; a full mailbox raises MailboxFull, an unknown one NoSuchAgent."""
        self.runtime.send(to, msg, sender=self)

    async def call(self, to: AgentRef | str, msg: Any, timeout: float = 5.0) -> Any:
        """Call an agent and wait for the reply until the deadline."""
        return await self.runtime.call(to, msg, timeout=timeout)

    def join_group(self, group: str) -> None:
        """Join a process group (cluster-wide on the mesh); membership ends when this agent exits."""
        self.runtime.join_group(group, self)

    def leave_group(self, group: str) -> None:
        """Leave a process group (nothing happens when this agent was not in it)."""
        self.runtime.leave_group(group, self)

    def send_group(self, group: str, msg: Any, mode: str = "all") -> None:
        """Cast to every member of ``group`` ("all") or to one, in round-robin turn ("one")."""
        self.runtime.send_group(group, msg, mode, sender=self)

    async def spawn(self, agent_type: str, args: dict[str, Any] | None = None, *, name: str | None = None,
                    link: bool = False, supervisor: AgentRef | str | None = None) -> AgentRef:
        """Start a temporary agent under a dynamic supervisor (the root one by default)."""
        ref = await self.runtime.spawn(agent_type, args or {}, name=name, supervisor=supervisor)
        if link:
            self.link(ref)
        return ref

    def send_after(self, delay: float, msg: Any, to: AgentRef | str | None = None) -> TimerRef:
        """Deliver ``msg`` after ``delay`` seconds (to this agent's ``handle_info`` by default)."""
        if self._timers is None:
            self._timers = {}
        timer_id = self.runtime.next_id()
        timers = self._timers

        def fire() -> None:
            timers.pop(timer_id, None)
            if to is None:
                self.mailbox.put_system((INFO, msg, None))
            else:
                try:
                    self.runtime.send(to, msg, sender=self)
                except AgentError as exc:
                    log.info("timer message from %s to %s not delivered: %s", self.agent_id, to, exc)

        timers[timer_id] = asyncio.get_running_loop().call_later(delay, fire)
        return TimerRef(timer_id)

    def cancel_timer(self, timer: TimerRef) -> bool:
        """Cancel a timer; False when it already fired."""
        handle = (self._timers or {}).pop(timer.timer_id, None)
        if handle is None:
            return False
        handle.cancel()
        return True

    def monitor(self, ref: AgentRef | str) -> int:
        """Get a Down info message when ``ref`` exits (at once with reason ``noproc`` if it does not exist)."""
        monitor_id = self.runtime.next_id()
        target = self.runtime.local_process(ref)
        if target is None or target.done:
            resolved = ref if isinstance(ref, AgentRef) else AgentRef(ref, self.runtime.node_id)
            self.mailbox.put_system((INFO, Down(monitor_id, resolved, "noproc"), None))
        else:
            if target._monitors is None:
                target._monitors = {}
            target._monitors[monitor_id] = self
        return monitor_id

    def demonitor(self, monitor_id: int) -> None:
        """Stop monitoring (no Down will arrive for this id)."""
        for proc in self.runtime.processes():
            if proc._monitors and monitor_id in proc._monitors:
                del proc._monitors[monitor_id]
                return

    def link(self, ref: AgentRef | str) -> None:
        """Link both ways; linking to an agent that does not exist kills this one with ``noproc``."""
        other = self.runtime.local_process(ref)
        if other is None or other.done:
            self.kill("noproc")
            return
        if self._links is None:
            self._links = set()
        if other._links is None:
            other._links = set()
        self._links.add(other)
        other._links.add(self)

    def unlink(self, ref: AgentRef | str) -> None:
        """Remove a link (both ways)."""
        other = self.runtime.local_process(ref)
        if other is not None:
            if self._links:
                self._links.discard(other)
            if other._links:
                other._links.discard(self)

    async def checkpoint(self, state: Any) -> int:
        """Persist ``state`` with the runtime's codec; returns the checkpoint's version."""
        self.checkpoint_version = self.runtime.save_checkpoint(self.agent_id, state)
        return self.checkpoint_version

    def stop(self, reason: str = NORMAL) -> None:
        """Exit with ``reason`` once the current callback returns (``terminate`` is called)."""
        self._stop_reason = reason

    def mailbox_statistics(self) -> MailboxStatistics:
        """This agent's mailbox snapshot."""
        return self.mailbox.statistics()

    async def call_local(self, msg: Any, timeout: float | None) -> Any:
        """Put a call in this agent's mailbox and wait for the reply (None: no deadline, for supervisors)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.mailbox.put_nowait((CALL, msg, future))
        if timeout is None:
            return await future
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled() and future.exception() is None:
                return future.result()
            raise CallTimeout(f"call to {self.agent_id} got no reply within {timeout} s") from None
