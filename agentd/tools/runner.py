"""Runs tool calls as supervised tasks inside a run: gates, approval, limits, timeout, receipts.

One call of :meth:`ToolRunner.invoke` takes a model's tool call from request to
receipt:

1. look the tool up and validate the arguments (unknown tool, bad arguments →
   a ``failed`` task whose error the model can read and correct);
2. the policy gate (:mod:`agentd.tools.policy`): ``deny`` fails the task with
   the rule's reason; ``ask`` records ``tool.approval_requested`` in the run and
   waits for a decision (``run.wait_approval``), which survives restarts
   because both the request and the decision live in the run's log; a passed
   deadline is a denial;
3. the task runs under three bounds — per node, per agent, per tool — in a task
   of its own, with the tool's timeout; cancellation of the caller cancels it;
   an exception fails the task, never the agent; a tool that ignores its
   cancellation is abandoned, and a result it returns late is recorded as
   non-authoritative (``tool.late_result``), never as the task's outcome;
4. every state change is a ``tool.state`` event, progress is ``tool.progress``,
   and the end is a ``tool.receipt`` (params hash, output hash, latency,
   attempts, error class);
5. what the model gets back is a bounded, redacted summary.

Exactly-once across crashes comes from the run: the whole execution is one
memoized step (``run.step("tool:<call id>", …)``), so a finished call is
replayed from the log. A call that *started* but never finished before a crash
is where the settlement boundary matters: a ``safe_retry`` tool runs again; a
``dedupe_reconcile_required`` tool is never run blindly a second time — its
``reconcile`` hook (if it has one) is asked with the idempotency key, otherwise
the task fails with ``reconcile_required`` for a human to settle.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentd.tools.policy import PolicyRule, Verdict, decide
from agentd.tools.receipts import (
    ToolReceipt,
    canonical_json,
    idempotency_key,
    redact,
    sha256_hex,
    summarize,
    tool_call_id,
)
from agentd.tools.registry import Settlement, Tool, ToolError, ToolRegistry
from agentd.tools.task import FAILURE_CLASS, TaskEvent, TaskState, initial_state, step

log = logging.getLogger(__name__)

#: How long a cancelled or timed-out tool gets to finish its cleanup before it is abandoned.
CANCEL_GRACE = 1.0


class ToolRun(Protocol):
    """What the runner needs from the run it works in (agentd's run context provides it)."""

    run_id: str
    tenant: str
    agent: str

    async def emit(self, event_type: str, payload: dict[str, Any]) -> Any:
        """Append an event to the run's log (its seq)."""
        ...

    async def step(self, key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Durable memo: the recorded result of ``key`` or ``fn()``, recorded now."""
        ...

    async def wait_approval(self, call_id: str, deadline: float, after: int = 0) -> tuple[bool, str]:
        """Wait for a human's decision on ``call_id`` until ``deadline`` (wall clock); (approved, note)."""
        ...


@dataclass(frozen=True)
class ToolCall:
    """A model's request to call a tool: which one, the raw arguments, and where in the run."""

    tool: str
    arguments: str | dict[str, Any] | None
    step_key: str


@dataclass
class ToolOutcome:
    """How a tool task ended: what the model gets (``summary``) and what the run records."""

    call_id: str
    tool: str
    state: TaskState
    summary: str
    output: Any = None
    error_class: str = ""
    error: str = ""
    receipt: ToolReceipt | None = None

    @property
    def ok(self) -> bool:
        """True when the tool succeeded."""
        return self.state is TaskState.SUCCEEDED

    def for_model(self) -> str:
        """The text that goes back to the model as the tool's result."""
        if self.ok:
            return self.summary
        return summarize({"error": self.error_class, "message": self.error}, limit=1000)


@dataclass
class ToolLimits:
    """Bounds on concurrent tool tasks: per node (shared by every agent of an agentd) and per agent."""

    per_node: int = 64
    per_agent: int = 8
    approval_timeout: float = 3600.0
    summary_bytes: int = 4000
    default_verdict: Verdict = Verdict.ALLOW


class ToolRunner:
    """Executes tool calls for one agent; share ``node_gate`` between the runners of one agentd."""

    def __init__(self, registry: ToolRegistry, rules: Sequence[PolicyRule] = (), *,
                 limits: ToolLimits | None = None, node_gate: asyncio.Semaphore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.rules = list(rules)
        self.limits = limits or ToolLimits()
        self.node_gate = node_gate or asyncio.Semaphore(self.limits.per_node)
        self.agent_gate = asyncio.Semaphore(self.limits.per_agent)
        self._tool_gates: dict[str, asyncio.Semaphore] = {}
        self.clock = clock
        self.abandoned: set[asyncio.Task[Any]] = set()

    async def invoke(self, call: ToolCall, run: ToolRun) -> ToolOutcome:
        """Run one tool call to its end; never raises for the tool's own failures (only on cancellation)."""
        try:
            tool = self.registry.get(call.tool)
            params = tool.parse_arguments(call.arguments)
        except ToolError as error:
            call_id = tool_call_id(run.run_id, call.step_key, call.tool, _plain(call.arguments))
            return await self._refused(run, call_id, call.tool, error.error_class, str(error))
        args = params.model_dump(mode="json")
        call_id = tool_call_id(run.run_id, call.step_key, tool.name, args)
        recorded = await run.step(f"tool:{call_id}", lambda: self._gate_and_execute(tool, args, params, call_id, run))
        return _outcome_from_record(recorded)

    async def _refused(self, run: ToolRun, call_id: str, name: str, error_class: str, message: str) -> ToolOutcome:
        receipt = ToolReceipt(call_id, name, TaskState.FAILED.value, "", "", "", "", 0.0, 0, error_class, message)
        await run.emit("tool.receipt", receipt.to_json())
        return ToolOutcome(call_id, name, TaskState.FAILED, "", error_class=error_class, error=message,
                           receipt=receipt)

    async def _gate_and_execute(self, tool: Tool, args: dict[str, Any], params: Any, call_id: str,
                                run: ToolRun) -> dict[str, Any]:
        decision = decide(self.rules, tool.name, tenant=run.tenant, agent=run.agent, run_id=run.run_id,
                          default=self.limits.default_verdict)
        state = initial_state(decision.verdict is Verdict.ASK)
        task = _Task(tool, args, call_id, run, state, self.clock())
        if decision.verdict is Verdict.DENY:
            return await task.finish(TaskState.FAILED, error_class="policy_denied", error=decision.reason)
        if decision.verdict is Verdict.ASK:
            # The deadline is a step of its own: a run resumed after a crash waits for the same one.
            timeout = self.limits.approval_timeout
            deadline = float(await run.step(f"tool-deadline:{call_id}", _constant(self.clock() + timeout)))
            seq = await run.emit("tool.approval_requested", {
                "tool_call_id": call_id, "tool": tool.name, "arguments": redact(args), "reason": decision.reason,
                "deadline": deadline})
            approved, note = await run.wait_approval(call_id, deadline, int(seq or 0))
            if not approved:
                event = TaskEvent.EXPIRE if note == "expired" else TaskEvent.DENY
                task.state = step(task.state, event).state
                return await task.finish(task.state, error_class=FAILURE_CLASS[event],
                                         error=f"approval {note or 'denied'} for tool {tool.name!r}")
            await task.move(TaskEvent.APPROVE)
        return await self._execute(task, params)

    async def _execute(self, task: _Task, params: Any) -> dict[str, Any]:
        tool, run = task.tool, task.run
        # The marker tells a first execution from a resumed one: its nonce is ours only the first time.
        nonce = uuid.uuid4().hex
        recorded = await run.step(f"tool-start:{task.call_id}", _constant(nonce))
        resumed = recorded != nonce
        if resumed and tool.settlement is Settlement.DEDUPE_RECONCILE_REQUIRED:
            return await self._reconcile(task)
        task.attempts = 2 if resumed else 1
        gate = self._tool_gate(tool)
        async with self.node_gate, self.agent_gate, gate:
            await task.move(TaskEvent.START)
            return await self._run_supervised(task, params)

    async def _run_supervised(self, task: _Task, params: Any) -> dict[str, Any]:
        tool = task.tool
        kwargs = dict(params)
        if tool.streams_progress:
            kwargs["progress"] = task.progress
        worker = asyncio.ensure_future(tool.function(**kwargs))
        try:
            done, _pending = await asyncio.wait({worker}, timeout=tool.timeout)
        except asyncio.CancelledError:
            await self._stop(worker, task)
            await task.finish(TaskState.CANCELED, error_class="canceled", error="the run cancelled the tool")
            raise
        if not done:
            await self._stop(worker, task)
            return await task.finish(TaskState.TIMED_OUT, error_class="timeout",
                                     error=f"tool {tool.name!r} ran longer than {tool.timeout:g} s")
        error = worker.exception()
        if error is not None:
            error_class = getattr(error, "error_class", "tool_raised")
            return await task.finish(TaskState.FAILED, error_class=error_class,
                                     error=f"{type(error).__name__}: {error}")
        try:
            output = tool.dump_output(worker.result())
        except ToolError as bad:
            return await task.finish(TaskState.FAILED, error_class=bad.error_class, error=str(bad))
        return await task.finish(TaskState.SUCCEEDED, output=output,
                                 summary=summarize(output, self.limits.summary_bytes))

    async def _stop(self, worker: asyncio.Future[Any], task: _Task) -> None:
        worker.cancel()
        done, _ = await asyncio.wait({worker}, timeout=CANCEL_GRACE)
        if worker in done:
            if not worker.cancelled():
                worker.exception()  # retrieved: a late outcome is not the task's
            return
        # It ignores cancellation: stop waiting, keep a handle, record its late result if it ever comes.
        abandoned = asyncio.ensure_future(_late(worker, task))
        self.abandoned.add(abandoned)
        abandoned.add_done_callback(self.abandoned.discard)

    async def _reconcile(self, task: _Task) -> dict[str, Any]:
        key = idempotency_key(task.run.run_id, task.call_id)
        reconcile = getattr(task.tool.function, "reconcile", None)
        if reconcile is None:
            return await task.finish(TaskState.FAILED, error_class="reconcile_required",
                                     error=f"tool {task.tool.name!r} started before a crash and may have acted; "
                                           f"settle it by idempotency key {key}")
        await task.move(TaskEvent.START)
        try:
            output = task.tool.dump_output(await reconcile(key))
        except Exception as error:  # the reconcile hook is tool code: its failure fails the task
            return await task.finish(TaskState.FAILED, error_class="reconcile_failed",
                                     error=f"{type(error).__name__}: {error}")
        return await task.finish(TaskState.SUCCEEDED, output=output,
                                 summary=summarize(output, self.limits.summary_bytes))

    def _tool_gate(self, tool: Tool) -> asyncio.Semaphore:
        gate = self._tool_gates.get(tool.name)
        if gate is None:
            gate = self._tool_gates[tool.name] = asyncio.Semaphore(tool.max_concurrency or 1 << 30)
        return gate


@dataclass
class _Task:
    """One tool task's bookkeeping while it runs."""

    tool: Tool
    args: dict[str, Any]
    call_id: str
    run: ToolRun
    state: TaskState
    started: float
    attempts: int = 0
    progress_events: int = field(default=0)

    async def move(self, event: TaskEvent) -> None:
        """Apply an event and record the new state."""
        outcome = step(self.state, event)
        if outcome.ignored:
            return
        self.state = outcome.state
        await self.run.emit("tool.state", {"tool_call_id": self.call_id, "tool": self.tool.name,
                                           "state": self.state.value})

    async def progress(self, value: Any) -> None:
        """The callable a streaming tool gets: records a bounded progress event."""
        if self.state.terminal:
            return
        if self.state is not TaskState.STREAMING_OUTPUT:
            await self.move(TaskEvent.PROGRESS)
        self.progress_events += 1
        await self.run.emit("tool.progress", {"tool_call_id": self.call_id, "n": self.progress_events,
                                              "progress": summarize(value, 2000)})

    async def finish(self, state: TaskState, *, output: Any = None, summary: str = "", error_class: str = "",
                     error: str = "") -> dict[str, Any]:
        """Record the end state and the receipt; return what the memo stores."""
        if not self.state.terminal:
            self.state = state
            await self.run.emit("tool.state", {"tool_call_id": self.call_id, "tool": self.tool.name,
                                               "state": state.value, "error_class": error_class})
        receipt = ToolReceipt(
            tool_call_id=self.call_id, tool=self.tool.name, state=self.state.value,
            settlement=self.tool.settlement.value, idempotency_key=idempotency_key(self.run.run_id, self.call_id),
            params_hash=sha256_hex(canonical_json(self.args)),
            output_hash=sha256_hex(canonical_json(output)) if output is not None else "",
            latency_ms=round((time.time() - self.started) * 1000, 3), attempts=self.attempts,
            error_class=error_class, error=error)
        await self.run.emit("tool.receipt", receipt.to_json())
        return {"call_id": self.call_id, "tool": self.tool.name, "state": self.state.value, "output": output,
                "summary": summary, "error_class": error_class, "error": error, "receipt": receipt.to_json()}


async def _late(worker: asyncio.Future[Any], task: _Task) -> None:
    try:
        value = await worker
    except BaseException as error:  # noqa: BLE001 - whatever it ends with is only recorded
        value = f"{type(error).__name__}: {error}"
    log.warning("tool %s (%s) returned after it was abandoned; recorded as non-authoritative",
                task.tool.name, task.call_id)
    await task.run.emit("tool.late_result", {"tool_call_id": task.call_id, "authoritative": False,
                                             "result": summarize(_plain(value), 1000)})


def _constant(value: Any) -> Callable[[], Awaitable[Any]]:
    async def fn() -> Any:
        return value
    return fn


def _plain(value: Any) -> Any:
    try:
        canonical_json(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _outcome_from_record(record: dict[str, Any]) -> ToolOutcome:
    receipt = record.get("receipt")
    return ToolOutcome(call_id=record["call_id"], tool=record["tool"], state=TaskState(record["state"]),
                       summary=record.get("summary", ""), output=record.get("output"),
                       error_class=record.get("error_class", ""), error=record.get("error", ""),
                       receipt=ToolReceipt(**receipt) if receipt else None)
