"""agentd on the mesh: names in meshd's registry, casts and calls across nodes by name (real processes)."""

import pytest

from mabeam.dev.testing import async_wait_until
from mabeam_client.agents import AgentClient
from mabeam_client.errors import NotFound
from mabeam_client.mesh import MeshClient


async def test_cross_node_call_and_cast_by_registered_name(dev_cluster) -> None:
    cluster = dev_cluster(2, agentd=True)
    node1, node2 = cluster.nodes
    async with AgentClient(node1.agentd.endpoint) as a1, AgentClient(node2.agentd.endpoint) as a2, \
            MeshClient(node2.endpoint) as mesh2:
        await a1.spawn("counter", {"start": 5}, name="tally")
        entry = await async_wait_until(lambda: mesh2.lookup("tally"), 3.0, what="name in meshd on node-2")
        assert entry.target.node_id == "node-1"
        assert await a2.call("tally", "get") == 5  # node-2's agentd → meshd → node-1 → the agent
        await a2.cast("tally", 3)
        await async_wait_until(lambda: _equals(a2.call("tally", "get"), 8), 3.0, what="cast applied")
        with pytest.raises(NotFound):
            await a2.call("no-such-agent", "get")


async def _equals(coro, value) -> bool:
    return (await coro) == value


async def test_names_leave_the_registry_when_the_agent_stops(dev_cluster) -> None:
    cluster = dev_cluster(2, agentd=True)
    node1, node2 = cluster.nodes
    async with AgentClient(node1.agentd.endpoint) as a1, MeshClient(node2.endpoint) as mesh2:
        agent_id = (await a1.spawn("echo", {}, name="short-lived")).agent_id
        await async_wait_until(lambda: mesh2.lookup("short-lived"), 3.0, what="name registered")
        await a1.stop(agent_id)

        async def gone() -> bool:
            try:
                await mesh2.lookup("short-lived")
                return False
            except NotFound:
                return True

        await async_wait_until(gone, 3.0, what="name removed after stop")


async def test_process_groups_span_nodes(dev_cluster) -> None:
    # Members on both nodes; meshd lists both agentds; "all" reaches every member, "one" exactly one
    # per send (meshd alternates between the nodes); stopped agents are no longer members.
    cluster = dev_cluster(2, agentd=True)
    node1, node2 = cluster.nodes
    async with AgentClient(node1.agentd.endpoint) as a1, AgentClient(node2.agentd.endpoint) as a2, \
            MeshClient(node1.endpoint) as mesh1:
        for client, name in ((a1, "p1"), (a1, "q1"), (a2, "p2")):
            await client.spawn("member", {"groups": ["crew"]}, name=name)

        async def nodes_in_group() -> set[str]:
            return {m.member.node_id for m in await mesh1.group_members("crew")}

        await async_wait_until(lambda: _equals(nodes_in_group(), {"node-1", "node-2"}), 5.0,
                               what="both agentds in meshd's group")
        assert sorted(await a1.group_members("crew")) == ["p1", "q1"]

        assert await a1.cast_group("crew", "to-all") == 2  # the two local members; p2 through meshd
        clients = {"p1": a1, "q1": a1, "p2": a2}

        async def seen() -> dict[str, list]:
            return {name: await client.call(name, "seen") for name, client in clients.items()}

        await async_wait_until(lambda: _equals(seen(), {n: ["to-all"] for n in clients}), 5.0,
                               what="the group cast at every member")

        for i in range(6):
            assert await a1.cast_group("crew", i, mode="one") == 0

        async def six_arrived() -> dict[str, list]:
            received = await seen()
            return received if sum(len(v) - 1 for v in received.values()) >= 6 else {}

        received = await async_wait_until(six_arrived, 5.0, what="six one-mode casts")
        ones = [m for name in clients for m in received[name][1:]]
        assert sorted(ones) == list(range(6))  # each send reached exactly one member
        assert len(received["p2"]) - 1 == 3  # meshd: round-robin over the two agentds

        await a2.stop("p2")
        await async_wait_until(lambda: _equals(nodes_in_group(), {"node-1"}), 5.0,
                               what="node-2's agentd left the group with its last member")
        await a1.stop("p1")
        assert await a1.group_members("crew") == ["q1"]


async def test_group_cast_meshd_cannot_deliver_comes_back_to_the_sending_agent(dev_cluster) -> None:
    cluster = dev_cluster(2, agentd=True)
    async with AgentClient(cluster.nodes[1].agentd.endpoint) as a2:
        await a2.spawn("member", {}, name="caller")
        await a2.call("caller", {"send_group": "ghosts", "msg": 1})  # no members anywhere: meshd bounces it
        await async_wait_until(lambda: _equals(a2.call("caller", "failed"), [["group:ghosts", "NOT_FOUND"]]),
                               5.0, what="DeliveryFailed from meshd's bounce")
