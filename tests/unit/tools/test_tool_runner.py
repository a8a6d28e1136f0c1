"""Tool tasks end to end against an in-memory run: gates, approval, limits, timeouts, crashes and resumes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agentd.tools.policy import PolicyRule, Scope, Verdict
from agentd.tools.registry import ToolRegistry, tool
from agentd.tools.runner import ToolCall, ToolLimits, ToolRunner
from agentd.tools.task import TaskState
from mabeam.dev.testing import async_wait_until


def _true_when(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return condition()
    return probe


class MemoryRun:
    """A run that keeps its log in memory; ``memo`` survives a simulated crash when shared."""

    def __init__(self, memo: dict[str, Any] | None = None, decisions: dict[str, tuple[bool, str]] | None = None,
                 run_id: str = "run-1") -> None:
        self.run_id, self.tenant, self.agent = run_id, "acme", "helper"
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.memo = memo if memo is not None else {}
        self.decisions = decisions or {}
        self.waited: list[str] = []

    async def emit(self, event_type: str, payload: dict[str, Any]) -> int:
        self.events.append((event_type, payload))
        return len(self.events)

    async def step(self, key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        if key not in self.memo:
            self.memo[key] = await fn()
        return self.memo[key]

    async def wait_approval(self, call_id: str, deadline: float, after: int = 0) -> tuple[bool, str]:
        self.waited.append(call_id)
        return self.decisions.get(call_id, (False, "expired"))

    def types(self) -> list[str]:
        return [t for t, _ in self.events]

    def states(self) -> list[str]:
        return [p["state"] for t, p in self.events if t == "tool.state"]


executions: dict[str, int] = {}


@tool(timeout=5)
async def add(a: int, b: int) -> int:
    """Adds two numbers."""
    executions["add"] = executions.get("add", 0) + 1
    return a + b


@tool(timeout=0.2)
async def stuck(seconds: float = 60) -> str:
    """Sleeps too long."""
    await asyncio.sleep(seconds)
    return "never"


@tool(timeout=0.2)
async def stubborn() -> str:
    """Ignores its cancellation once."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(1.5)  # longer than the runner's grace period
    return "late"


@tool
async def boom() -> str:
    """Raises."""
    raise RuntimeError("disk on fire")


@tool
async def unserialisable() -> object:
    """Returns something with no JSON form."""
    return object()


@tool
async def report(topic: str, progress=None) -> dict:  # noqa: ANN001
    """Streams progress."""
    for i in range(3):
        await progress({"done": i})
    return {"topic": topic, "secret_token": "s3cr3t"}


@tool(settlement="dedupe_reconcile_required", max_concurrency=1)
async def pay(amount: int) -> dict:
    """Moves money."""
    executions["pay"] = executions.get("pay", 0) + 1
    return {"paid": amount}


REGISTRY = ToolRegistry([add, stuck, stubborn, boom, unserialisable, report, pay])


def runner(rules: list[PolicyRule] | None = None, **limits: Any) -> ToolRunner:
    return ToolRunner(REGISTRY, rules or [], limits=ToolLimits(**limits))


async def test_success_records_states_and_a_receipt() -> None:
    run = MemoryRun()
    outcome = await runner().invoke(ToolCall("add", '{"a": 2, "b": 3}', "s1"), run)
    assert outcome.ok and outcome.output == 5 and outcome.for_model() == "5"
    assert run.states() == ["running", "succeeded"]
    receipt = dict(run.events)["tool.receipt"]
    assert receipt["state"] == "succeeded" and receipt["attempts"] == 1 and receipt["params_hash"]
    assert receipt["output_hash"] and receipt["latency_ms"] >= 0 and receipt["settlement"] == "safe_retry"


async def test_unknown_tool_and_bad_arguments_fail_readably() -> None:
    run = MemoryRun()
    unknown = await runner().invoke(ToolCall("nope", "{}", "s1"), run)
    assert unknown.state is TaskState.FAILED and unknown.error_class == "unknown_tool"
    assert "available:" in unknown.for_model()
    bad = await runner().invoke(ToolCall("add", '{"a": "x"}', "s2"), run)
    assert bad.error_class == "invalid_arguments" and "b" in bad.error and "a" in bad.error


async def test_raise_hang_and_unserialisable_each_end_defined() -> None:
    run = MemoryRun()
    raised = await runner().invoke(ToolCall("boom", None, "s1"), run)
    assert raised.state is TaskState.FAILED and raised.error_class == "tool_raised" and "disk on fire" in raised.error
    hung = await runner().invoke(ToolCall("stuck", None, "s2"), run)
    assert hung.state is TaskState.TIMED_OUT and hung.error_class == "timeout"
    bad = await runner().invoke(ToolCall("unserialisable", None, "s3"), run)
    assert bad.state is TaskState.FAILED and bad.error_class == "unserialisable_output"


async def test_a_tool_ignoring_cancellation_is_abandoned_and_its_late_result_not_authoritative() -> None:
    run = MemoryRun()
    r = runner()
    outcome = await r.invoke(ToolCall("stubborn", None, "s1"), run)
    assert outcome.state is TaskState.TIMED_OUT
    await asyncio.wait_for(asyncio.gather(*r.abandoned), 10)
    late = [p for t, p in run.events if t == "tool.late_result"]
    assert late and late[0]["authoritative"] is False
    assert run.states()[-1] == "timed_out"


async def test_cancel_while_running() -> None:
    run = MemoryRun()
    task = asyncio.ensure_future(runner().invoke(ToolCall("stuck", '{"seconds": 30}', "s1"), run))
    await async_wait_until(_true_when(lambda: "running" in run.states()), 10, what="tool running")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert run.states()[-1] == "canceled"


async def test_progress_streams_and_output_is_redacted_for_the_model() -> None:
    run = MemoryRun()
    outcome = await runner().invoke(ToolCall("report", '{"topic": "x"}', "s1"), run)
    assert run.states() == ["running", "streaming_output", "succeeded"]
    assert len([t for t in run.types() if t == "tool.progress"]) == 3
    assert "s3cr3t" not in outcome.for_model() and outcome.output["secret_token"] == "s3cr3t"


async def test_deny_returns_the_reason_to_the_model() -> None:
    rules = [PolicyRule(Scope.TENANT, "pay", Verdict.DENY, "acme", reason="payments need a human")]
    outcome = await runner(rules).invoke(ToolCall("pay", '{"amount": 5}', "s1"), MemoryRun())
    assert outcome.error_class == "policy_denied" and "payments need a human" in outcome.for_model()


async def test_ask_approved_denied_expired() -> None:
    rules = [PolicyRule(Scope.DEFAULT, "add", Verdict.ASK)]
    r = runner(rules)
    first = MemoryRun()
    outcome = await r.invoke(ToolCall("add", '{"a": 1, "b": 1}', "s1"), first)
    call_id = outcome.call_id
    assert outcome.error_class == "approval_expired" and first.waited == [call_id]
    requested = dict(first.events)["tool.approval_requested"]
    assert requested["tool"] == "add" and requested["arguments"] == {"a": 1, "b": 1}
    approved = MemoryRun(decisions={call_id: (True, "ok")})
    assert (await r.invoke(ToolCall("add", '{"a": 1, "b": 1}', "s1"), approved)).output == 2
    assert approved.states() == ["queued", "running", "succeeded"]
    denied = MemoryRun(decisions={call_id: (False, "denied")})
    assert (await r.invoke(ToolCall("add", '{"a": 1, "b": 1}', "s1"), denied)).error_class == "approval_denied"


async def test_finished_call_is_replayed_not_rerun() -> None:
    memo: dict[str, Any] = {}
    executions.clear()
    call = ToolCall("add", '{"b": 2, "a": 1}', "s1")
    first = await runner().invoke(call, MemoryRun(memo))
    again = await runner().invoke(ToolCall("add", '{"a": 1, "b": 2}', "s1"), MemoryRun(memo))
    assert first.call_id == again.call_id and again.output == 3 and executions["add"] == 1


async def test_dedupe_tool_started_before_a_crash_is_never_run_twice() -> None:
    # The crash: the start marker is in the log, the result is not.
    executions.clear()
    memo: dict[str, Any] = {}
    run = MemoryRun(memo)
    call = ToolCall("pay", '{"amount": 7}', "s1")
    from agentd.tools.receipts import tool_call_id

    call_id = tool_call_id("run-1", "s1", "pay", {"amount": 7})
    memo[f"tool-start:{call_id}"] = "nonce-of-the-dead-executor"
    outcome = await runner().invoke(call, run)
    assert outcome.error_class == "reconcile_required" and "mabeam:run-1:" in outcome.error
    assert executions.get("pay", 0) == 0

    async def reconcile(key: str) -> dict:
        return {"paid": 7, "found_by": key}

    pay.function.reconcile = reconcile  # type: ignore[attr-defined]
    try:
        memo2 = {f"tool-start:{call_id}": "nonce-of-the-dead-executor"}
        reconciled = await runner().invoke(call, MemoryRun(memo2))
        assert reconciled.ok and reconciled.output["found_by"] == f"mabeam:run-1:{call_id}"
        assert executions.get("pay", 0) == 0
    finally:
        del pay.function.reconcile  # type: ignore[attr-defined]


async def test_safe_retry_tool_runs_again_after_a_crash() -> None:
    executions.clear()
    from agentd.tools.receipts import tool_call_id

    call_id = tool_call_id("run-1", "s1", "add", {"a": 1, "b": 1})
    memo = {f"tool-start:{call_id}": "nonce-of-the-dead-executor"}
    outcome = await runner().invoke(ToolCall("add", {"a": 1, "b": 1}, "s1"), MemoryRun(memo))
    assert outcome.ok and outcome.receipt is not None and outcome.receipt.attempts == 2


async def test_concurrency_bounds_per_agent_and_per_tool() -> None:
    running = 0
    peak = 0
    gate = asyncio.Event()

    @tool
    async def slow(n: int) -> int:
        """Waits for the gate."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        return n

    r = ToolRunner(ToolRegistry([slow]), limits=ToolLimits(per_agent=3))
    run = MemoryRun()
    tasks = [asyncio.ensure_future(r.invoke(ToolCall("slow", {"n": i}, f"s{i}"), run)) for i in range(10)]
    await async_wait_until(_true_when(lambda: running >= 3), 10, what="three tools running")
    for _ in range(100):  # every runnable task gets many turns: an over-limit one would start now
        await asyncio.sleep(0)
    assert peak == 3
    gate.set()
    outcomes = await asyncio.gather(*tasks)
    assert sorted(o.output for o in outcomes) == list(range(10))
