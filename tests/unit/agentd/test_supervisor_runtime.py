"""Supervisors running real agents: strategies, ordered start, reverse shutdown with timeouts, escalation."""

from __future__ import annotations

from typing import Any

import pytest
from agents_for_tests import journal

from agentd.errors import InvalidArgument
from agentd.runtime import Runtime
from agentd.supervision import REACHED_MAX_RESTART_INTENSITY, ChildSpec, Restart, StartSpec
from mabeam.dev.testing import async_wait_until


def child(tag: str, key: str, **extra: Any) -> dict[str, Any]:
    args = {"journal": key, "tag": tag, **extra.pop("args", {})}
    return {"id": tag, "start": {"type": "recorder", "args": args}, **extra}


async def start_tree(runtime: Runtime, strategy: str, children: list[dict[str, Any]], **flags: Any) -> str:
    spec = ChildSpec(id="sup", start=StartSpec(type="supervisor",
                                               args={"strategy": strategy, "children": children, **flags}),
                     restart=Restart.TEMPORARY, shutdown=30.0)
    ref = await runtime.start_child(spec)
    return ref.agent_id


def _observed(key: str, crashed: str) -> list[tuple[Any, ...]]:
    # The crashed child's own stop event may or may not be journaled (it crashed): leave it out, and
    # count only the rest, or a wait could end before the last restart is seen.
    return [e for e in journal(key) if e[0] == "start" or e[1] != crashed]


async def crash_and_settle(runtime: Runtime, agent_id: str, key: str, events: int) -> list[tuple[Any, ...]]:
    crashed = agent_id.rsplit("/", 1)[-1]
    runtime.send(agent_id, "crash")
    await async_wait_until(lambda: len(_observed(key, crashed)) >= events, what=f"{events} events")
    return _observed(key, crashed)


@pytest.mark.parametrize(("strategy", "expected"), [
    # one_for_one: only b restarts.
    ("one_for_one", [("start", "b")]),
    # one_for_all: c and a stopped (reverse order), then a, b, c started in order.
    ("one_for_all", [("stop", "c", "shutdown"), ("stop", "a", "shutdown"),
                     ("start", "a"), ("start", "b"), ("start", "c")]),
    # rest_for_one: c stopped, then b and c started.
    ("rest_for_one", [("stop", "c", "shutdown"), ("start", "b"), ("start", "c")]),
])
async def test_strategy_restarts_in_order(runtime: Runtime, strategy: str, expected: list[tuple[Any, ...]]) -> None:
    key = f"s-{strategy}"
    await start_tree(runtime, strategy, [child(t, key) for t in "abc"])
    assert journal(key) == [("start", "a"), ("start", "b"), ("start", "c")]  # ordered start
    journal(key).clear()
    assert await crash_and_settle(runtime, "sup/b", key, len(expected)) == expected


async def test_shutdown_is_reverse_ordered_with_timeout_and_brutal_kill(runtime: Runtime) -> None:
    key = "shutdown"
    await start_tree(runtime, "one_for_one", [
        child("a", key),
        child("slow", key, args={"slow_terminate": True}, shutdown=0.2),  # killed after 0.2 s
        child("brutal", key, shutdown="brutal_kill"),  # killed at once, terminate not called
        child("d", key),
    ])
    slow = runtime.local_process("sup/slow")
    await runtime.stop_agent("sup")
    stops = [e for e in journal(key) if e[0] == "stop"]
    assert stops == [("stop", "d", "shutdown"), ("stop", "a", "shutdown")]
    assert slow is not None and slow.exit_reason == "killed"
    assert len(runtime) == 1  # only root is left


async def test_intensity_exceeded_escalates_to_parent(runtime: Runtime) -> None:
    # Inner supervisor allows 1 restart in 60 s; the second crash makes it give up with
    # reason shutdown:reached_max_restart_intensity; the outer one restarts it (permanent).
    key = "esc"
    inner = {"id": "inner", "start": {"type": "supervisor", "args": {
        "strategy": "one_for_one", "max_restarts": 1, "max_seconds": 60, "children": [child("w", key)]}}}
    await start_tree(runtime, "one_for_one", [inner], max_restarts=5, max_seconds=60)
    first_inner = runtime.local_process("sup/inner")
    runtime.send("sup/inner/w", "crash")
    await async_wait_until(lambda: journal(key).count(("start", "w")) == 2)
    runtime.send("sup/inner/w", "crash")
    await async_wait_until(lambda: first_inner is not None and first_inner.done)
    assert first_inner is not None and first_inner.exit_reason == REACHED_MAX_RESTART_INTENSITY
    await async_wait_until(lambda: runtime.local_process("sup/inner") not in (None, first_inner))
    await async_wait_until(lambda: journal(key).count(("start", "w")) == 3)
    assert runtime.local_process("sup/inner").restarts == 1  # type: ignore[union-attr]
    assert runtime.tree("sup")["children"][0]["children"][0]["agent_id"] == "sup/inner/w"


async def test_root_level_escalation_stops_the_tree(runtime: Runtime) -> None:
    # A temporary top-level supervisor that gives up is not restarted: its whole subtree is gone.
    key = "gone"
    await start_tree(runtime, "one_for_one", [child("w", key)], max_restarts=0)
    sup = runtime.local_process("sup")
    runtime.send("sup/w", "crash")
    await async_wait_until(lambda: sup is not None and sup.done)
    assert runtime.local_process("sup/w") is None


async def test_transient_child_not_restarted_after_normal_exit(runtime: Runtime) -> None:
    key = "tr"
    await start_tree(runtime, "one_for_one", [child("t", key, restart="transient")])
    runtime.send("sup/t", "stop")
    await async_wait_until(lambda: ("stop", "t", "normal") in journal(key))
    await async_wait_until(lambda: runtime.local_process("sup/t") is None)
    assert journal(key).count(("start", "t")) == 1


async def test_static_supervisor_start_and_terminate_child(runtime: Runtime) -> None:
    key = "dyn"
    await start_tree(runtime, "one_for_one", [child("a", key)])
    ref = await runtime.start_child(ChildSpec.model_validate(child("b", key)), supervisor="sup")
    assert ref.agent_id == "sup/b"
    await runtime.stop_agent(ref)
    assert runtime.local_process("sup/b") is None
    assert await runtime.call("sup", ("which_children",)) == [("a", True)]


async def test_bad_supervisor_spec_rejected(runtime: Runtime) -> None:
    with pytest.raises(InvalidArgument, match="failed to start"):
        await start_tree(runtime, "one_for_some", [])
    with pytest.raises(InvalidArgument, match="failed to start"):
        await start_tree(runtime, "one_for_one", [{"id": "x", "start": {"type": "nope"}}])


async def test_child_failing_at_supervisor_start_stops_the_started_ones(runtime: Runtime) -> None:
    key = "initfail"
    with pytest.raises(InvalidArgument):
        await start_tree(runtime, "one_for_one", [child("a", key), child("b", key, args={"fail_init": True})])
    assert journal(key) == [("start", "a"), ("stop", "a", "shutdown")]
