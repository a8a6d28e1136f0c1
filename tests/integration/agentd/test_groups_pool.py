"""Process groups across worker processes, and the pool's mesh hooks for them (a fake mesh bridge)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentd.errors import NoSuchAgent
from agentd.supervision import ChildSpec, StartSpec
from agentd.workers import WorkerPool
from mabeam.dev.testing import async_wait_until


async def until(condition: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait for a (sync or async) condition, failing after ``timeout``."""
    await async_wait_until(condition, timeout, interval=0.01)


class FakeMesh:
    """Records what the pool asks of the mesh: group joins and leaves, group casts."""

    def __init__(self) -> None:
        self.joined: list[str] = []
        self.left: list[str] = []
        self.group_casts: list[tuple[str, Any, str, str | None]] = []

    def name_registered(self, name: str, agent_id: str, tenant: str) -> None: ...
    def name_unregistered(self, name: str, agent_id: str, tenant: str) -> None: ...

    def cast(self, to: str, msg: Any, sender: str | None, tenant: str) -> None:
        raise NoSuchAgent(to)

    async def call(self, to: str, msg: Any, timeout: float, tenant: str) -> Any:
        raise NoSuchAgent(to)

    def group_joined(self, group: str, tenant: str) -> None:
        self.joined.append(group)

    def group_left(self, group: str, tenant: str) -> None:
        self.left.append(group)

    def send_group(self, group: str, msg: Any, mode: str, sender: str | None, tenant: str) -> None:
        self.group_casts.append((group, msg, mode, sender))


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[WorkerPool]:
    workers = WorkerPool({"examples": True, "store_path": str(tmp_path / "c.sqlite")}, workers=2)
    await workers.start()
    yield workers
    await workers.close()


async def member(pool: WorkerPool, name: str, *groups: str) -> None:
    spec = ChildSpec(id=name, name=name, start=StartSpec(type="member", args={"groups": list(groups)}),
                     restart="permanent")
    await pool.spawn(spec)


async def seen(pool: WorkerPool, name: str) -> list[Any]:
    result: list[Any] = await pool.call(name, "seen")
    return result


async def test_group_cast_reaches_members_in_every_worker(pool: WorkerPool) -> None:
    for name in ("a", "b", "c"):
        await member(pool, name, "team")
    assert len({pool.owner[name] for name in ("a", "b", "c")}) == 2  # spread over both workers
    await until(lambda: len(pool.group_members("team")) == 3)
    assert pool.send_group("team", "hi") == 3
    for name in ("a", "b", "c"):
        await until(lambda n=name: _is(seen(pool, n), ["hi"]))
    # An agent's own group cast goes through the main process to the other worker's members too.
    assert await pool.call("a", {"send_group": "team", "msg": "from a"}) == "ok"
    for name in ("a", "b", "c"):
        await until(lambda n=name: _is(seen(pool, n), ["hi", "from a"]))


async def test_one_mode_takes_turns_across_workers(pool: WorkerPool) -> None:
    for name in ("a", "b"):
        await member(pool, name, "team")
    await until(lambda: len(pool.group_members("team")) == 2)
    for i in range(6):
        pool.send_group("team", i, mode="one")
    await until(lambda: _total(pool, ["a", "b"], 6))
    assert sorted(await seen(pool, "a") + await seen(pool, "b")) == list(range(6))
    assert len(await seen(pool, "a")) == 3


async def test_stop_and_worker_death_end_membership(pool: WorkerPool) -> None:
    mesh = FakeMesh()
    pool.mesh = mesh
    for name in ("a", "b"):
        await member(pool, name, "team")
    await until(lambda: sorted(pool.group_members("team")) == ["a", "b"])
    assert mesh.joined == ["team"]  # the first local member joins meshd's group, once
    await pool.stop_agent("a")
    await until(lambda: pool.group_members("team") == ["b"])
    assert mesh.left == []
    pool.kill_worker(pool.owner["b"])
    await until(lambda: mesh.left == ["team"])  # its worker died: the last member is gone
    # "b" is permanent: it comes back with its worker and joins again in init.
    await until(lambda: pool.group_members("team") == ["b"])
    assert mesh.joined == ["team", "team"]


async def test_with_a_mesh_all_goes_local_and_out_and_one_goes_out(pool: WorkerPool) -> None:
    mesh = FakeMesh()
    pool.mesh = mesh
    await member(pool, "a", "team")
    await until(lambda: pool.group_members("team") == ["a"])
    assert pool.send_group("team", "x") == 1
    assert pool.send_group("team", "y", mode="one") == 0  # meshd picks the node
    assert pool.send_group("elsewhere", "z") == 0  # no members here: only the mesh copy
    assert mesh.group_casts == [("team", "x", "all", None), ("team", "y", "one", None),
                                ("elsewhere", "z", "all", None)]
    await until(lambda: _is(seen(pool, "a"), ["x"]))
    # Inbound from the mesh: local members only ("one": the next in turn).
    assert pool.deliver_group("team", "in", "one") == 1
    await until(lambda: _is(seen(pool, "a"), ["x", "in"]))
    with pytest.raises(NoSuchAgent):
        pool.deliver_group("elsewhere", "in", "all")


async def test_a_group_cast_nobody_can_take_comes_back_to_the_sender(pool: WorkerPool) -> None:
    await member(pool, "lonely")
    with pytest.raises(NoSuchAgent):
        pool.send_group("nobody", "x")
    await pool.call("lonely", {"send_group": "nobody", "msg": "x"})
    await until(lambda: _is(pool.call("lonely", "failed"), [["group:nobody", "NOT_FOUND"]]))


async def _is(coro: Awaitable[Any], value: Any) -> bool:
    return (await coro) == value


async def _total(pool: WorkerPool, names: list[str], count: int) -> bool:
    return sum([len(await seen(pool, name)) for name in names]) >= count
