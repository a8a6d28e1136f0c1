"""agentd on the mesh: names in meshd's registry, casts and calls across nodes by name (real processes)."""

import pytest

from mabeam.testing import async_wait_until
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
