"""Worker faults with real processes: kill -9, a blocked loop named by the watchdog, dedicated workers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentd.errors import AgentError, CallTimeout, MailboxFull
from agentd.supervision import ChildSpec, StartSpec
from agentd.workers import WorkerPool
from mabeam.dev.testing import async_wait_until


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Retry ``probe`` until it returns without an error; its result (which may be falsy)."""
    async def boxed() -> tuple[Any]:
        return (await probe(),)

    return (await async_wait_until(boxed, timeout, interval=0.02, what="the probe to succeed"))[0]


async def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    await async_wait_until(condition, timeout, interval=0.02)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[WorkerPool]:
    config = {"examples": True, "store_path": str(tmp_path / "checkpoints.sqlite"), "block_warn_s": 0.3,
              "mailbox_capacity": 50}
    workers = WorkerPool(config, workers=2, block_kill_s=2.0)
    await workers.start()
    yield workers
    await workers.close()
    for handle in workers.workers.values():
        assert handle.process is not None and handle.process.returncode is not None


def counter(child_id: str, **args: Any) -> ChildSpec:
    return ChildSpec(id=child_id, name=child_id, start=StartSpec(type="counter", args=args), restart="permanent")


async def test_kill_9_worker_restores_its_agents_from_checkpoints(pool: WorkerPool) -> None:
    for i in range(20):
        await pool.spawn(counter(f"c{i}", start=i))
        await pool.call(f"c{i}", {"add": 100})
    victim = pool.owner["c0"]
    on_victim = [f"c{i}" for i in range(20) if pool.owner[f"c{i}"] == victim]
    old_pid = await pool.call("c0", "pid")
    assert pool.kill_worker(victim) == old_pid
    for name in on_victim:
        assert await eventually(lambda n=name: pool.call(n, "get")) == int(name[1:]) + 100
    assert await pool.call("c0", "pid") != old_pid
    assert pool.events.worker_restarts == 1


async def test_watchdog_names_the_blocking_agent_then_kills_and_restarts_the_worker(pool: WorkerPool) -> None:
    await pool.spawn(counter("blocker", start=1))
    await pool.call("blocker", {"add": 1})
    old_pid = await pool.call("blocker", "pid")
    with pytest.raises(AgentError):  # the worker is killed under the call: UNAVAILABLE
        await pool.call("blocker", {"block": 30}, timeout=60)
    assert ("blocker" in [agent for _, agent, _ in pool.events.blocked_agents])
    assert pool.events.killed == 1
    assert await eventually(lambda: pool.call("blocker", "get")) == 2
    assert await pool.call("blocker", "pid") != old_pid


async def test_process_isolation_gives_an_agent_its_own_worker(pool: WorkerPool) -> None:
    await pool.spawn(counter("shared"))
    await pool.spawn(ChildSpec(id="alone", name="alone", start=StartSpec(type="counter"), isolation="process"))
    shared_pids = {h.pid for h in pool.workers.values() if not h.dedicated}
    alone_pid = await pool.call("alone", "pid")
    assert alone_pid not in shared_pids and await pool.call("shared", "pid") in shared_pids
    dedicated = pool.workers[pool.owner["alone"]]
    assert dedicated.dedicated
    await pool.stop_agent("alone")
    await wait_for(lambda: dedicated.process is not None and dedicated.process.returncode is not None)
    assert "alone" not in pool.owner


async def test_cross_process_call_between_agents(pool: WorkerPool) -> None:
    # The relay and the counter live in different workers; the call goes through the main process.
    await pool.spawn(counter("target", start=41))
    await pool.spawn(ChildSpec(id="relay", start=StartSpec(type="relay"), isolation="process"))
    assert pool.owner["relay"] != pool.owner["target"]
    assert await pool.call("relay", {"to": "target", "msg": {"add": 1}}) == 42


async def test_full_mailbox_in_a_worker_is_resource_exhausted_at_the_caller(pool: WorkerPool) -> None:
    await pool.spawn(counter("busy"))
    caller = asyncio.ensure_future(pool.call("busy", {"sleep": 1.0}, timeout=10))
    try:
        errors = []
        for _ in range(80):
            try:
                await pool.cast("busy", 1)
            except MailboxFull as exc:
                errors.append(exc)
        assert errors and errors[0].code.name == "RESOURCE_EXHAUSTED"
    finally:
        assert await caller == "slept"
    assert os.getpid() != await pool.call("busy", "pid")


async def test_a_call_past_its_deadline_is_deadline_exceeded(pool: WorkerPool) -> None:
    # The main process keeps the deadline (timeout + 1 s for the hop), swept every <= 0.1 s.
    await pool.spawn(counter("stuck"))
    began = time.monotonic()
    with pytest.raises(CallTimeout) as caught:
        await pool.call("stuck", {"sleep": 30}, timeout=0.2)
    assert caught.value.code.name == "DEADLINE_EXCEEDED"
    assert 1.1 <= time.monotonic() - began < 6.0  # the deadline, not the 30 s sleep (slack: a starved machine)
    assert not any(handle.pending for handle in pool.workers.values())


class FakeMesh:
    """A stand-in for the meshd wiring: records names, answers calls for 'remote-*' names."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.casts: list[tuple[str, Any]] = []

    def name_registered(self, name: str, agent_id: str, tenant: str) -> None:
        self.names[name] = agent_id

    def name_unregistered(self, name: str, agent_id: str, tenant: str) -> None:
        self.names.pop(name, None)

    def cast(self, to: str, msg: Any, sender: str | None, tenant: str) -> None:
        self.casts.append((to, msg))

    async def call(self, to: str, msg: Any, timeout: float, tenant: str) -> Any:
        if not to.startswith("remote-"):
            from agentd.errors import NoSuchAgent

            raise NoSuchAgent(f"no agent {to} in the cluster")
        return {"from": to, "echo": msg}


async def test_mesh_bridge_gets_names_and_unknown_destinations(pool: WorkerPool) -> None:
    mesh = FakeMesh()
    pool.mesh = mesh
    await pool.spawn(counter("named"))
    await wait_for(lambda: mesh.names.get("named") == "named")
    await pool.spawn(ChildSpec(id="relay2", start=StartSpec(type="relay")))
    # An agent's call to a name no worker hosts leaves through the bridge.
    assert await pool.call("relay2", {"to": "remote-x", "msg": 7}) == {"from": "remote-x", "echo": 7}
    with pytest.raises(AgentError, match="in the cluster"):
        await pool.call("relay2", {"to": "nowhere", "msg": 1})
    await pool.stop_agent("named")  # names removed when an agent stops
    await wait_for(lambda: "named" not in mesh.names)


async def test_a_worker_whose_root_supervisor_gives_up_is_restarted(tmp_path: Path) -> None:
    # Root intensity 2 restarts per minute: the third crash makes the root give up; the worker exits
    # and the main process restarts it, bringing the agent back from its checkpoint.
    config = {"examples": True, "store_path": str(tmp_path / "c.sqlite"), "root_max_restarts": 2,
              "root_max_seconds": 60.0}
    workers = WorkerPool(config, workers=1)
    await workers.start()
    try:
        await workers.spawn(counter("fragile"))
        assert await workers.call("fragile", {"add": 7}) == 7
        old_pid = await workers.call("fragile", "pid")
        for crash in range(3):
            await eventually(lambda: workers.cast("fragile", "crash"))
            if crash < 2:
                await eventually(lambda: workers.call("fragile", "get"))  # restarted by the root
        await wait_for(lambda: workers.events.worker_restarts == 1)
        assert await eventually(lambda: workers.call("fragile", "get")) == 7
        assert await workers.call("fragile", "pid") != old_pid
    finally:
        await workers.close()
