"""The gRPC face (MeshService.Send/Call/Subscribe) and ``meshctl send|call|subscribe`` against a real server."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from mabeam.dataplane.message import AgentRef as MessageRef
from mabeam.dev.testing import async_wait_until
from mabeam.grpcutil import ErrorInterceptor
from mabeam.v1 import common_pb2, dataplane_pb2, external_agent_pb2, mesh_pb2_grpc
from mabeam_client import cli_dataplane
from mabeam_client.errors import NotFound
from mabeam_client.mesh import MeshClient
from mabeam_client.types import AgentRef, Delivery, Endpoint
from meshd.dataplane import DataPlane, InMemoryRegistry
from meshd.dataplane.grpc_face import DataPlaneServicerMixin
from meshd.dataplane.testing import started_planes

Pair = tuple[DataPlane, DataPlane]


class _Servicer(DataPlaneServicerMixin, mesh_pb2_grpc.MeshServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.dataplane = plane


@pytest.fixture
async def served(pair: Pair) -> AsyncIterator[tuple[Pair, str]]:
    """n0's data plane behind a real grpc.aio server on loopback."""
    server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=[("grpc.so_reuseport", 0)])
    mesh_pb2_grpc.add_MeshServiceServicer_to_server(_Servicer(pair[0]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield pair, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_subscribe_send_call_and_reply_over_grpc(served: tuple[Pair, str]) -> None:
    (a, b), address = served
    async with grpc.aio.insecure_channel(address) as channel:
        stub = mesh_pb2_grpc.MeshServiceStub(channel)
        stream = stub.Subscribe(dataplane_pb2.SubscribeRequest(agent_id="grpc-ep", names=["svc"]))
        first = await stream.read()
        assert first.endpoint.agent_id == "grpc-ep" and first.endpoint.node_id == "n0"
        # A cast from the other node arrives on the stream.
        await b.cast(None, "svc", b"hello")
        got = await stream.read()
        assert got.payload == b"hello" and got.envelope.kind == dataplane_pb2.MESSAGE_KIND_CAST
        # A call from n1 is answered by the gRPC client with Send(reply_to_id=...).
        call = asyncio.create_task(b.call(None, "svc", b"question", timeout=3))
        request = await stream.read()
        assert request.envelope.kind == dataplane_pb2.MESSAGE_KIND_CALL
        await stub.Send(dataplane_pb2.SendRequest(sender_agent_id="grpc-ep", to_agent=request.envelope.sender,
                                                  reply_to_id=request.envelope.id, payload=b"answer"))
        assert (await call).payload == b"answer"
        # Call over gRPC to an endpoint on n1.
        echo = b.open_endpoint("echo", handler=lambda m: echo.reply(m, m.payload[::-1]))
        reply = await stub.Call(dataplane_pb2.CallRequest(
            to_agent=common_pb2.AgentRef(node_id="n1", agent_id="echo"), payload=b"abc", timeout_ms=2000))
        assert reply.payload == b"cba" and reply.responder.node_id == "n1"
        # Typed errors become status codes.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Send(dataplane_pb2.SendRequest(to_name="nobody", payload=b"x"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        silent = b.open_endpoint("silent", handler=lambda m: None)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(dataplane_pb2.CallRequest(to_agent=silent.ref.to_proto(), payload=b"x", timeout_ms=200))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        stream.cancel()
    # The stream's end removed its name.
    await async_wait_until(lambda: a.registry.lookup("default", "svc") is None, 5, what="name removed with the stream")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meshctl")
    cli_dataplane.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def test_meshctl_send_call_subscribe(served: tuple[Pair, str], capsys: pytest.CaptureFixture[str]) -> None:
    (a, b), address = served
    echo = b.open_endpoint("echo", handler=lambda m: echo.reply(m, b"pong:" + m.payload))
    await echo.register_name("echo")
    rx = b.open_endpoint("rx")
    await rx.register_name("rx")
    code = await asyncio.to_thread(cli_dataplane.cmd_call, _parse(["call", "--meshd", address, "echo", "ping"]))
    assert code == 0 and capsys.readouterr().out.strip() == "pong:ping"
    code = await asyncio.to_thread(cli_dataplane.cmd_send, _parse(["send", "--meshd", address, "rx", "hi",
                                                                   "--channel", "high"]))
    assert code == 0
    assert (await rx.receive(timeout=2)).payload == b"hi"
    code = await asyncio.to_thread(cli_dataplane.cmd_send, _parse(["send", "--meshd", address, "ghost", "x"]))
    assert code == 1 and "NOT_FOUND" in capsys.readouterr().err
    sub = asyncio.create_task(asyncio.to_thread(
        cli_dataplane.cmd_subscribe, _parse(["subscribe", "--meshd", address, "--name", "cli", "--count", "1"])))
    await async_wait_until(lambda: b.registry.lookup("default", "cli") is not None, 5, what="subscriber registered")
    await b.cast(None, "cli", b"to the cli")
    assert await sub == 0
    out = capsys.readouterr().out
    assert '"payload": "to the cli"' in out and '"endpoint"' in out


async def test_the_sdk_subscribes_calls_and_replies(served: tuple[Pair, str]) -> None:
    # MeshClient's data-plane face: typed Endpoint/Delivery items, a call answered through MeshClient.reply.
    _, address = served
    async with MeshClient(address) as server_side, MeshClient(address) as client_side:
        stream = server_side.subscribe(agent_id="sdk-svc", names=["sdk-svc"])
        first = await anext(stream)
        assert isinstance(first, Endpoint) and first.ref.agent_id == "sdk-svc"

        async def serve() -> None:
            delivery = await anext(stream)
            assert isinstance(delivery, Delivery) and delivery.kind == "call"
            await server_side.reply(delivery, b"re:" + delivery.payload, sender="sdk-svc")

        server = asyncio.create_task(serve())
        reply = await client_side.call("sdk-svc", b"question", timeout=5.0)
        await server
        assert reply.payload == b"re:question" and reply.responder.agent_id == "sdk-svc"
        assert len(await client_side.send(AgentRef("", "n0", "sdk-svc"), b"cast")) == 1
        cast = await anext(stream)
        assert isinstance(cast, Delivery) and (cast.kind, cast.payload) == ("cast", b"cast")
        with pytest.raises(NotFound):
            await client_side.call("nobody-here", b"x", timeout=2.0)
        await stream.aclose()



class _SlowViewRegistry(InMemoryRegistry):
    """Registrations land, then wait for the test's gate: meshd's etcd write committed while its own view of
    the registry has not caught up yet (``MeshNode.register_name`` awaits ``wait_revision`` after the txn)."""

    def __init__(self, slow: str) -> None:
        super().__init__()
        self.slow = slow
        self.committed = asyncio.Event()
        self.gate = asyncio.Event()

    async def register_name(self, tenant: str, name: str, agent: MessageRef) -> None:
        await super().register_name(tenant, name, agent)
        if name == self.slow:
            self.committed.set()
            await self.gate.wait()


@pytest.mark.parametrize("rpc", ["Subscribe", "AttachAgent"])
async def test_a_stream_cancelled_while_its_name_registers_leaves_no_name_behind(rpc: str) -> None:
    # The client gives up while meshd registers the stream's second name: the write has landed, the handler
    # is still waiting for it. Both names must go with the stream, or they would point at a closed
    # endpoint for as long as this meshd lives (its lease keeps them).
    registry = _SlowViewRegistry(slow="second")
    [plane] = await started_planes(1, registry)
    server = grpc.aio.server(interceptors=[ErrorInterceptor()], options=[("grpc.so_reuseport", 0)])
    mesh_pb2_grpc.add_MeshServiceServicer_to_server(_Servicer(plane), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = mesh_pb2_grpc.MeshServiceStub(channel)
            if rpc == "Subscribe":
                stream = stub.Subscribe(dataplane_pb2.SubscribeRequest(agent_id="ep", names=["first", "second"]))
            else:
                attach = external_agent_pb2.AttachAgentRequest(agent_id="ep", names=["first", "second"])
                stream = stub.AttachAgent(iter([external_agent_pb2.AgentStreamIn(attach=attach)]))
            await asyncio.wait_for(registry.committed.wait(), 10)
            stream.cancel()
            await async_wait_until(lambda: not registry.names, 10, what=f"both names removed (left: {registry.names})")
    finally:
        registry.gate.set()
        await server.stop(None)
        await plane.stop()
