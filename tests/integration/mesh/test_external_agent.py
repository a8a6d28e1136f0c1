"""External agents over MeshService.AttachAgent (real meshd and agentd processes, the Python SDK's agent)."""

import asyncio

import grpc
import pytest

from mabeam.dev.testing import async_wait_until
from mabeam.v1 import dataplane_pb2, mesh_pb2_grpc
from mabeam.v1 import external_agent_pb2 as pb
from mabeam_client.agents import AgentClient
from mabeam_client.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    translate,
)
from mabeam_client.external import ExternalAgent
from mabeam_client.mesh import MeshClient


async def _gone(mesh: MeshClient, name: str) -> bool:
    try:
        await mesh.lookup(name)
        return False
    except NotFound:
        return True


async def test_python_agents_call_an_external_agent_by_name_and_it_calls_them(dev_cluster) -> None:
    # agentd's relay on node-2 calls the external agent attached to node-1 by name; the external
    # agent's handler calls agentd's echo on node-2 back, within the same deadline.
    cluster = dev_cluster(2, agentd=True)
    node1, node2 = cluster.nodes
    seen: list[float | None] = []

    async def on_call(msg, incoming):
        seen.append(incoming.time_left())
        back = await incoming.agent.call("echo-2", {"via": "ext", "msg": msg})
        return {"ext": msg, "back": back}

    async with AgentClient(node2.agentd.endpoint) as a2, MeshClient(node2.endpoint) as mesh2:
        await a2.spawn("echo", {}, name="echo-2")
        await a2.spawn("relay", {}, name="relay-2")
        async with ExternalAgent(node1.endpoint, names=["ext-1"], on_call=on_call) as agent:
            assert agent.ref.node_id == "node-1"
            await async_wait_until(lambda: mesh2.lookup("ext-1"), 3.0, what="external name seen on node-2")
            reply = await a2.call("relay-2", {"to": "ext-1", "msg": "hi", "timeout": 3.0}, timeout=5.0)
            assert reply == {"ext": "hi", "back": {"via": "ext", "msg": "hi"}}
            assert seen and 0 < seen[0] <= 3.0  # the relay's deadline reached the external agent
            with pytest.raises(NotFound):
                await agent.call("nobody-here", 1)
        await async_wait_until(lambda: _gone(mesh2, "ext-1"), 5.0, what="name gone after the stream ended")


async def test_casts_arrive_in_order_one_at_a_time_and_a_full_mailbox_bounces(dev_cluster) -> None:
    cluster = dev_cluster(1)
    node = cluster.nodes[0]
    release = asyncio.Event()
    got: list[int] = []
    active = 0

    async def on_cast(msg, incoming):
        nonlocal active
        active += 1
        assert active == 1  # one at a time
        if msg == 0:
            await release.wait()
        got.append(msg)
        active -= 1

    async with ExternalAgent(node.endpoint, names=["slow"], on_cast=on_cast, max_pending=4), \
            ExternalAgent(node.endpoint, names=["sender"]) as sender, MeshClient(node.endpoint) as mesh:
        for i in range(5):  # 0 is being handled (blocked), 1..4 fill the mailbox
            await sender.cast("slow", i)
        await async_wait_until(lambda: _true(len(got) == 0), 1.0, what="nothing handled yet")
        stub = mesh_pb2_grpc.MeshServiceStub(mesh._channel)
        with pytest.raises(grpc.RpcError) as caught:  # a fifth waiting message bounces at once
            await stub.Call(dataplane_pb2.CallRequest(to_name="slow", payload=b"\xc0", timeout_ms=2000))
        assert isinstance(translate(caught.value), ResourceExhausted)
        release.set()
        await async_wait_until(lambda: _true(got == [0, 1, 2, 3, 4]), 5.0, what="all casts, in order")


async def _true(value: bool) -> bool:
    return value


async def test_reconnects_and_registers_again_after_meshd_is_killed_and_restarted(dev_cluster) -> None:
    # kill -9 meshd: the stream drops; the agent retries with backoff (NAME_TAKEN while the dead
    # incarnation's lease lives, UNAVAILABLE while nothing listens) and attaches to the new meshd.
    cluster = dev_cluster(1)
    node = cluster.nodes[0]

    async def on_call(msg, incoming):
        return msg

    agent = ExternalAgent(node.endpoint, names=["phoenix"], on_call=on_call, backoff=(0.05, 0.5))
    async with agent:
        cluster.kill(0)
        await async_wait_until(lambda: _true(not agent.attached.is_set()), 10.0, what="stream dropped")
        cluster.start_node(node)
        await async_wait_until(lambda: _true(agent.attachments >= 2 and agent.attached.is_set()), 20.0,
                               what="attached again")
        async with MeshClient(node.endpoint) as mesh:
            entry = await mesh.lookup("phoenix")
            assert entry.target.agent_id == agent.ref.agent_id
        async with ExternalAgent(node.endpoint, names=["caller"]) as caller:
            assert await caller.call("phoenix", [1, 2]) == [1, 2]


async def test_attach_errors_are_typed(dev_cluster) -> None:
    cluster = dev_cluster(1)
    node = cluster.nodes[0]
    async with ExternalAgent(node.endpoint, names=["taken"]):
        with pytest.raises(AlreadyExists):
            await ExternalAgent(node.endpoint, names=["taken"], reconnect=False).start(timeout=5.0)
    async with grpc.aio.insecure_channel(node.endpoint) as channel:
        stub = mesh_pb2_grpc.MeshServiceStub(channel)

        async def wrong_first():
            yield pb.AgentStreamIn(handled=pb.AgentHandled(delivery_id=1))

        with pytest.raises(grpc.RpcError) as caught:
            async for _ in stub.AttachAgent(wrong_first()):
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidArgument):
        await ExternalAgent(node.endpoint, names=["bad name!"], reconnect=False).start(timeout=5.0)


async def test_a_call_past_its_deadline_fails_at_the_caller_with_deadline_exceeded(dev_cluster) -> None:
    cluster = dev_cluster(1)
    node = cluster.nodes[0]

    async def on_call(msg, incoming):
        await asyncio.sleep(msg)
        return "late"

    async with ExternalAgent(node.endpoint, names=["sleeper"], on_call=on_call), \
            ExternalAgent(node.endpoint, names=["caller"]) as caller:
        with pytest.raises(DeadlineExceeded):
            await caller.call("sleeper", 1.0, timeout=0.2)
        assert await caller.call("sleeper", 0, timeout=5.0) == "late"
