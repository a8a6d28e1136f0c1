"""The data plane inside real meshd processes: peers follow etcd membership, names resolve cluster-wide."""

import asyncio

import grpc

from mabeam.dataplane.attach import AttachedEndpoint
from mabeam.dev.testing import async_wait_until
from mabeam.v1 import dataplane_pb2, mesh_pb2_grpc
from mabeam_client.mesh import MeshClient


async def test_attached_agent_answers_a_call_by_name_from_another_node(dev_cluster) -> None:
    cluster = dev_cluster(3)
    node1, node3 = cluster.nodes[0], cluster.nodes[2]
    members = await MeshClient(node1.endpoint).members()
    assert all(set(m.data_addresses) == {"control", "high", "normal", "bulk"} for m in members)
    agent = await AttachedEndpoint.connect(node1.attach_address, "echo-1")
    try:
        await agent.register_name("echo")  # through meshd's registry: under node-1's lease in etcd
        mesh3 = MeshClient(node3.endpoint)
        entry = await async_wait_until(lambda: mesh3.lookup("echo"), 5.0, what="name visible on node-3")
        assert (entry.target.node_id, entry.target.agent_id) == ("node-1", "echo-1")

        async def serve_one() -> None:
            request = await agent.receive(timeout=10)
            await agent.reply(request, b"echo:" + bytes(request.payload))

        server = asyncio.create_task(serve_one())
        async with grpc.aio.insecure_channel(node3.endpoint) as channel:
            stub = mesh_pb2_grpc.MeshServiceStub(channel)
            reply = await stub.Call(dataplane_pb2.CallRequest(to_name="echo", payload=b"hi", timeout_ms=5000),
                                    timeout=10)
        assert reply.payload == b"echo:hi"
        await server
        await mesh3.close()
    finally:
        await agent.close()


async def test_unknown_name_is_not_found_through_the_mesh(dev_cluster) -> None:
    cluster = dev_cluster(2)
    async with grpc.aio.insecure_channel(cluster.endpoints[1]) as channel:
        stub = mesh_pb2_grpc.MeshServiceStub(channel)
        try:
            await stub.Call(dataplane_pb2.CallRequest(to_name="nobody", payload=b"x", timeout_ms=1000), timeout=5)
            raise AssertionError("expected NOT_FOUND")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
