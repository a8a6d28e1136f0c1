"""Process groups (Erlang pg): the pure table, and a stand-alone runtime's group casts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentd.behaviour import AgentRef
from agentd.errors import InvalidArgument, NoSuchAgent
from agentd.examples import Member
from agentd.groups import GroupTable
from agentd.runtime import Runtime
from agentd.supervision import Restart
from mabeam.dev.testing import async_wait_until


async def until(condition: Any) -> None:
    """Wait for a synchronous condition (5 s deadline)."""

    async def check() -> bool:
        return bool(condition())

    await async_wait_until(check, 5.0, interval=0.002)

# --- the table ------------------------------------------------------------------------------


def test_join_is_idempotent_and_a_member_may_be_in_many_groups() -> None:
    table: GroupTable[str] = GroupTable()
    assert table.join("g", "a") and not table.join("g", "a")
    assert table.join("h", "a") and table.join("g", "b")
    assert table.members("g") == ["a", "b"] and table.groups_of("a") == ["g", "h"]
    assert "a" in table and "z" not in table


def test_leave_reports_membership_and_empty_groups_disappear() -> None:
    table: GroupTable[str] = GroupTable()
    table.join("g", "a")
    assert not table.leave("g", "b") and not table.leave("nope", "a")
    assert table.leave("g", "a")
    assert table.groups() == [] and table.size("g") == 0 and "a" not in table


def test_leave_all_removes_an_exited_member_everywhere() -> None:
    table: GroupTable[str] = GroupTable()
    for group in ("x", "y"):
        table.join(group, "a")
    table.join("y", "b")
    assert table.leave_all("a") == ["x", "y"]
    assert table.groups() == ["y"] and table.members("y") == ["b"]


def test_remove_where_returns_only_the_groups_left_empty() -> None:
    # A dead worker's members go at once; "shared" keeps a member of another worker.
    table: GroupTable[tuple[str, str]] = GroupTable()
    table.join("solo", ("w0", "a"))
    table.join("shared", ("w0", "b"))
    table.join("shared", ("w1", "c"))
    assert table.remove_where(lambda member: member[0] == "w0") == ["solo"]
    assert table.members("shared") == [("w1", "c")]


def test_pick_is_round_robin_over_sorted_members() -> None:
    table: GroupTable[str] = GroupTable()
    for member in ("c", "a", "b"):
        table.join("g", member)
    assert [table.pick("g") for _ in range(4)] == ["a", "b", "c", "a"]
    table.leave("g", "b")
    assert table.pick("g") in ("a", "c") and table.pick("empty") is None


# --- a stand-alone runtime ------------------------------------------------------------------


async def _members(runtime: Runtime, names: list[str], groups: list[str]) -> None:
    runtime.registry.register("member", Member)
    for name in names:
        await runtime.spawn("member", {"groups": groups}, name=name, restart=Restart.PERMANENT)


async def test_send_group_all_reaches_every_member(runtime: Runtime) -> None:
    await _members(runtime, ["m1", "m2", "m3"], ["team"])
    runtime.send_group("team", "hello")
    for name in ("m1", "m2", "m3"):
        assert await runtime.call(name, "seen") == ["hello"]


async def test_send_group_one_takes_turns(runtime: Runtime) -> None:
    await _members(runtime, ["m1", "m2"], ["team"])
    for i in range(4):
        runtime.send_group("team", i, mode="one")
    assert await runtime.call("m1", "seen") == [0, 2]
    assert await runtime.call("m2", "seen") == [1, 3]


async def test_an_agent_sends_to_its_group_and_leaves_it(runtime: Runtime) -> None:
    await _members(runtime, ["m1", "m2"], ["team"])
    await runtime.call("m1", {"send_group": "team", "msg": "from m1"})
    assert await runtime.call("m2", "seen") == ["from m1"]
    assert await runtime.call("m1", "seen") == ["from m1"]  # the sender is a member too, as in pg
    await runtime.call("m2", {"leave": "team"})
    assert [ref.agent_id for ref in runtime.group_members("team")] == ["m1"]


async def test_membership_ends_when_the_agent_stops(runtime: Runtime) -> None:
    await _members(runtime, ["m1", "m2"], ["team", "all"])
    await runtime.stop_agent("m1")
    assert runtime.group_members("team") == [AgentRef("m2")] and runtime.groups.groups_of("m1") == []


async def test_empty_group_and_bad_mode_are_errors(runtime: Runtime) -> None:
    with pytest.raises(NoSuchAgent):
        runtime.send_group("nobody", "x")
    with pytest.raises(InvalidArgument):
        runtime.send_group("nobody", "x", mode="some")


async def test_a_full_member_mailbox_comes_back_as_delivery_failed() -> None:
    # Capacity 1 and a member busy in a call: the group cast cannot go in; its sender hears so.
    class Busy(Member):
        mailbox_capacity = 1

        async def handle_call(self, msg: Any, state: Any) -> tuple[Any, Any]:
            if msg == "wait":
                await asyncio.sleep(0.3)
            return await super().handle_call(msg, state)

    from agents_for_tests import make_registry

    registry = make_registry()
    registry.register("member", Member)
    registry.register("busy", Busy)
    async with Runtime(registry) as runtime:
        await runtime.spawn("busy", {"groups": ["team"]}, name="busy")
        await runtime.spawn("member", {}, name="sender")
        waiting = asyncio.ensure_future(runtime.call("busy", "wait"))
        busy = runtime.local_process("busy")
        assert busy is not None
        await until(lambda: busy.status == "running")  # it took the call: the mailbox is empty again
        runtime.send("busy", "fills the mailbox")
        await runtime.call("sender", {"send_group": "team", "msg": "late"})
        assert await waiting == "ok"
        assert await runtime.call("sender", "failed") == [["busy", "RESOURCE_EXHAUSTED"]]


class Recording:
    """A router that records group notifications (the worker's hooks toward the main process)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def cast(self, to: Any, msg: Any, sender: Any) -> None:
        raise NoSuchAgent(str(to))

    async def call(self, to: Any, msg: Any, timeout: float) -> Any:
        raise NoSuchAgent(str(to))

    def name_registered(self, name: str, ref: AgentRef) -> None: ...
    def name_unregistered(self, name: str, ref: AgentRef) -> None: ...
    def agent_removed(self, agent_id: str) -> None: ...

    def group_joined(self, group: str, ref: AgentRef) -> None:
        self.events.append(("joined", group, ref.agent_id))

    def group_left(self, group: str, ref: AgentRef) -> None:
        self.events.append(("left", group, ref.agent_id))

    def send_group(self, group: str, msg: Any, mode: str, sender: AgentRef | None) -> None:
        self.events.append(("send", group, f"{mode}:{msg}:{sender.agent_id if sender else ''}"))


async def test_a_worker_runtime_reports_joins_exits_and_group_casts_to_its_router() -> None:
    # A crash ends the membership (left); the restarted incarnation joins again in init.
    from agents_for_tests import make_registry

    registry = make_registry()
    registry.register("member", Member)
    router = Recording()
    async with Runtime(registry, router=router) as runtime:
        await runtime.spawn("member", {"groups": ["g"]}, name="m", restart=Restart.PERMANENT)
        await runtime.call("m", {"send_group": "g", "msg": 1, "mode": "one"})
        runtime.local_process("m").kill("crash")  # type: ignore[union-attr]
        await until(lambda: len(router.events) == 4)
        assert router.events == [("joined", "g", "m"), ("send", "g", "one:1:m"), ("left", "g", "m"),
                                 ("joined", "g", "m")]
