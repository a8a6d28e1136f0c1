"""The behaviour and runtime: callbacks, one message at a time, mailboxes, timers, monitors, links, checkpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agents_for_tests import CounterState, journal

from agentd.behaviour import Agent, AgentRef
from agentd.errors import AgentExited, AlreadyExists, CallTimeout, InvalidArgument, MailboxFull, NoSuchAgent
from agentd.process import SHUTDOWN
from agentd.runtime import Runtime
from agentd.supervision import Restart
from mabeam.dev.testing import async_wait_until


async def test_cast_call_and_registered_name(runtime: Runtime) -> None:
    ref = await runtime.spawn("counter", {"start": 1}, name="c1")
    runtime.send("c1", 5)
    runtime.send(ref, 4)
    assert await runtime.call("c1", "get") == 10
    assert runtime.whereis("c1") == ref


async def test_one_message_at_a_time(runtime: Runtime) -> None:
    # A slow cast delays the call behind it: the callbacks never overlap.
    ref = await runtime.spawn("recorder", {})
    runtime.send(ref, {"sleep": 0.05})
    runtime.send(ref, "second")
    assert await runtime.call(ref, "seen") == [{"sleep": 0.05}, "second"]


async def test_mailbox_full_is_resource_exhausted_and_system_messages_bypass(runtime: Runtime) -> None:
    ref = await runtime.spawn("recorder", {})
    runtime.send(ref, {"sleep": 0.2})  # keeps the agent busy while the mailbox fills
    await async_wait_until(lambda: runtime.info(ref).mailbox_depth == 0)
    for i in range(100):
        runtime.send(ref, i)
    with pytest.raises(MailboxFull) as caught:
        runtime.send(ref, "one too many")
    assert caught.value.code.name == "RESOURCE_EXHAUSTED"
    with pytest.raises(MailboxFull):
        await runtime.call(ref, "seen")
    proc = runtime.local_process(ref)
    assert proc is not None
    stats = proc.mailbox_statistics()
    assert (stats.depth, stats.capacity, stats.rejected_total) == (100, 100, 2)
    runtime.send_info(ref, "info bypasses the bound")
    proc.mailbox.put_system((SHUTDOWN, "shutdown", None))  # and so does shutdown
    await proc.wait(5)
    assert proc.exit_reason == "shutdown"


async def test_call_deadline_and_typed_error_reply(runtime: Runtime) -> None:
    ref = await runtime.spawn("recorder", {})
    runtime.send(ref, {"sleep": 0.5})
    with pytest.raises(CallTimeout):
        await runtime.call(ref, "x", timeout=0.05)
    # A typed error raised by handle_call is the caller's error, not a crash.
    with pytest.raises(InvalidArgument):
        await runtime.call(ref, "bad")
    assert await runtime.call(ref, "restarts") == 0


async def test_callee_crash_fails_the_call_with_its_reason(runtime: Runtime) -> None:
    ref = await runtime.spawn("recorder", {})
    with pytest.raises(AgentExited, match="crash in call"):
        await runtime.call(ref, "crash")
    with pytest.raises(NoSuchAgent):
        runtime.send(ref, "gone")  # temporary: not restarted


async def test_spawn_rejects_unknown_type_duplicate_name_and_failing_init(runtime: Runtime) -> None:
    with pytest.raises(InvalidArgument, match="unknown agent type"):
        await runtime.spawn("nope", {})
    await runtime.spawn("recorder", {}, name="taken")
    with pytest.raises(AlreadyExists):
        await runtime.spawn("recorder", {}, name="taken")
    with pytest.raises(InvalidArgument, match="failed to start"):
        await runtime.spawn("recorder", {"fail_init": True})
    with pytest.raises(InvalidArgument):
        await runtime.spawn("recorder", {}, name="bad name with spaces")


async def test_send_after_and_cancel_timer(runtime: Runtime) -> None:
    ref = await runtime.spawn("recorder", {})
    proc = runtime.local_process(ref)
    assert proc is not None
    proc.send_after(0.01, "tick")
    cancelled = proc.send_after(0.01, "never")
    assert proc.cancel_timer(cancelled)
    await async_wait_until(lambda: "tick" in proc.state["seen"])
    assert "never" not in proc.state["seen"]


async def test_monitor_gets_down_with_reason(runtime: Runtime) -> None:
    watcher = runtime.local_process(await runtime.spawn("recorder", {}))
    target = await runtime.spawn("recorder", {})
    assert watcher is not None
    watcher.monitor(target)
    runtime.send(target, "crash")
    await async_wait_until(lambda: any(isinstance(m, dict) and m.get("info") == "Down" for m in watcher.state["seen"]))
    down = [m for m in watcher.state["seen"] if isinstance(m, dict)][0]
    assert down["reason"].startswith("error: RuntimeError")
    watcher.monitor(AgentRef("no-such"))
    await async_wait_until(lambda: {"info": "Down", "reason": "noproc"} in watcher.state["seen"])


async def test_link_kills_partner_on_abnormal_exit_not_on_normal(runtime: Runtime) -> None:
    a = runtime.local_process(await runtime.spawn("recorder", {}))
    b = runtime.local_process(await runtime.spawn("recorder", {}))
    c = runtime.local_process(await runtime.spawn("recorder", {}))
    assert a is not None and b is not None and c is not None
    a.link(b.self_ref)
    b.link(c.self_ref)
    runtime.send(a.self_ref, "stop")  # normal: b survives
    await async_wait_until(lambda: a.done)
    assert not b.done
    runtime.send(b.self_ref, "crash")  # abnormal: c dies with the same reason
    await async_wait_until(lambda: c.done)
    assert c.exit_reason is not None and c.exit_reason.startswith("error: RuntimeError")


async def test_checkpoint_restored_on_restart_as_pydantic_model(runtime: Runtime) -> None:
    ref = await runtime.spawn("counter", {"start": 1}, restart=Restart.PERMANENT, name="durable")
    runtime.send(ref, 2)
    runtime.send(ref, 3)
    assert await runtime.call(ref, "get") == 6
    old = runtime.local_process(ref)
    runtime.send(ref, "crash")
    await async_wait_until(lambda: (p := runtime.local_process("durable")) is not None and p is not old
                     and p.status != "starting")
    assert await runtime.call("durable", "get") == 6
    new = runtime.local_process("durable")
    assert new is not None and isinstance(new.state, CounterState) and new.state.history == [2, 3]
    assert new.restarts == 1 and new.last_error.startswith("error: RuntimeError")
    assert runtime.store.journal_mode() in ("wal", "memory")
    await runtime.stop_agent("durable")
    assert runtime.store.get(ref.agent_id) is None  # stopped for good: checkpoint deleted


async def test_per_message_timeout_kills_and_supervisor_restarts(runtime: Runtime) -> None:
    # Recorder's handle_timeout is 2 s; "hang" sleeps forever.
    ref = await runtime.spawn("recorder", {"journal": "t"}, restart=Restart.PERMANENT, name="hanger")
    first = runtime.local_process(ref)
    runtime.send(ref, "hang")
    await async_wait_until(lambda: first is not None and first.done, timeout=10)
    assert first is not None and first.exit_reason == "timeout"
    await async_wait_until(lambda: runtime.local_process("hanger") not in (None, first))
    assert await runtime.call("hanger", "restarts") == 1
    assert runtime.restart_reasons.get("timeout") == 1
    assert [e[0] for e in journal("t")] == ["start", "start"]  # killed: no terminate


async def test_restart_policy_changes_args_after_n_failures(runtime: Runtime) -> None:
    ref = await runtime.spawn("escalating", {"model": "small"}, restart=Restart.PERMANENT, name="e")
    for attempt in range(1, 4):
        proc = runtime.local_process("e")
        runtime.send("e", "crash")
        await async_wait_until(lambda p=proc: runtime.local_process("e") not in (None, p)
                         and runtime.local_process("e").status != "starting")  # type: ignore[union-attr]
        args = await runtime.call(ref, "args")
        assert args["model"] == ("large" if attempt >= 3 else "small")
    assert args["attempt"] == 3 and args["last_reason"].startswith("error: RuntimeError")


async def test_runtime_level_restart_policy() -> None:
    from agents_for_tests import make_registry

    seen = []

    def policy(spec, attempt, reason):  # type: ignore[no-untyped-def]
        seen.append((spec.id, attempt, reason))
        return {"fresh": True}

    async with Runtime(make_registry(), restart_policy=policy) as rt:
        await rt.spawn("recorder", {}, name="p", restart=Restart.PERMANENT)
        rt.send("p", "crash")
        await async_wait_until(lambda: seen and (p := rt.local_process("p")) is not None and p.status == "idle")
        assert await rt.call("p", "args") == {"fresh": True}
    assert seen[0][:2] == ("p", 1)


async def test_statistics_is_an_immutable_snapshot(runtime: Runtime) -> None:
    ref = await runtime.spawn("recorder", {})
    proc = runtime.local_process(ref)
    assert proc is not None
    stats = proc.mailbox_statistics()
    with pytest.raises(AttributeError):
        stats.depth = 5  # type: ignore[misc]
    runtime.send(ref, 1)
    assert proc.mailbox_statistics().received_total == stats.received_total + 1


async def test_stop_runtime_terminates_everything(runtime: Runtime) -> None:
    for i in range(20):
        await runtime.spawn("recorder", {"journal": "all", "tag": i})
    await runtime.stop()
    assert len(runtime) == 0
    assert sorted(e[1] for e in journal("all") if e[0] == "stop") == list(range(20))
    await asyncio.sleep(0)


class _Patient(Agent):
    """handle_timeout 0.3 s: each cast sleeps as long as it says; a call that catches its cancellation."""

    handle_timeout = 0.3

    async def init(self, args: dict[str, Any]) -> Any:
        return None

    async def handle_cast(self, msg: Any, state: Any) -> Any:
        await asyncio.sleep(msg)
        return state

    async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
        if msg == "stubborn":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                return "ignored the deadline", state
        return msg, state


async def test_the_handling_deadline_is_per_message_not_cumulative(runtime: Runtime) -> None:
    # Messages that each finish within 0.3 s, back to back for longer than 0.3 s, are not a timeout
    # (the deadline timer armed for the first message re-arms for the one running when it fires).
    runtime.registry.register("patient", _Patient)
    ref = await runtime.spawn("patient", {})
    proc = runtime.local_process(ref)
    assert proc is not None
    for _ in range(8):
        runtime.send(ref, 0.1)
    assert await runtime.call(ref, "done", timeout=5) == "done"
    assert not proc.done
    began = asyncio.get_running_loop().time()
    runtime.send(ref, 3600)
    await async_wait_until(lambda: proc.done, timeout=5)
    assert proc.exit_reason == "timeout"
    assert asyncio.get_running_loop().time() - began >= 0.29


async def test_a_callback_that_swallows_its_cancellation_still_times_out(runtime: Runtime) -> None:
    runtime.registry.register("patient", _Patient)
    ref = await runtime.spawn("patient", {})
    proc = runtime.local_process(ref)
    assert proc is not None
    # Its late reply is delivered, but the agent overran its deadline: it exits with reason timeout.
    assert await runtime.call(ref, "stubborn", timeout=5) == "ignored the deadline"
    await async_wait_until(lambda: proc.done, timeout=5)
    assert proc.exit_reason == "timeout"
