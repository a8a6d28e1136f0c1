"""The error contract end to end on a real gRPC server: raised errors → ErrorInterceptor → status → SDK class.

A toy MeshService servicer raises each kind of error the daemons raise; the
SDK's one decoder (``mabeam_client.errors.translate``) must give back the
class, reason, metadata, field violations and retry delay the server meant.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agentd.errors import AgentExited, MailboxFull, NoSuchAgent
from mabeam.dataplane.errors import Unavailable as PeerUnavailable
from mabeam.dataplane.errors import error_from_code
from mabeam.errors import FieldViolation, ServiceError, invalid_argument
from mabeam.etcd.client import EtcdUnavailable
from mabeam.grpcutil import ErrorInterceptor
from mabeam.v1 import coordinator_pb2, mesh_pb2, mesh_pb2_grpc
from mabeam_client import errors as sdk

# What the toy servicer raises, keyed by the name it is asked to look up.
RAISES: dict[str, BaseException] = {
    "plain": ServiceError(grpc.StatusCode.NOT_FOUND, "no such name", "NOT_REGISTERED"),
    "fields": invalid_argument([FieldViolation("name", "is empty"), FieldViolation("tenant", "bad id")]),
    "leader": ServiceError(grpc.StatusCode.UNAVAILABLE, "standby", "WRONG_NODE", retry_after_s=0.25,
                           metadata={"leader": "127.0.0.1:1"}),
    "peer": PeerUnavailable("node-2 left"),
    "enveloped": error_from_code(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "mailbox of svc is full"),
    "agent": NoSuchAgent("no agent a-1"),
    "exited": AgentExited("agent a-1 exited: crash", "crash"),
    "mailbox": MailboxFull("full"),
    "etcd": EtcdUnavailable("connection refused"),
    "bug": KeyError("secret-internal-detail"),
    "group": ExceptionGroup("task group", [ServiceError(grpc.StatusCode.ALREADY_EXISTS, "taken", "NAME_TAKEN")]),
}
EXPECTED: dict[str, tuple[type[sdk.MabeamError], str]] = {
    "plain": (sdk.NotFound, "NOT_REGISTERED"),
    "fields": (sdk.InvalidArgument, "INVALID_FIELD"),
    "leader": (sdk.Unavailable, "WRONG_NODE"),
    "peer": (sdk.Unavailable, "PEER_UNAVAILABLE"),
    "enveloped": (sdk.ResourceExhausted, "MAILBOX_FULL"),
    "agent": (sdk.NotFound, "NO_SUCH_AGENT"),
    "exited": (sdk.Aborted, "AGENT_EXITED"),
    "mailbox": (sdk.ResourceExhausted, "MAILBOX_FULL"),
    "etcd": (sdk.Unavailable, "ETCD_UNAVAILABLE"),
    "bug": (sdk.Internal, "INTERNAL_ERROR"),
    "group": (sdk.AlreadyExists, "NAME_TAKEN"),
}


class Toy(mesh_pb2_grpc.MeshServiceServicer):
    """Lookup raises what ``RAISES[name]`` holds; WatchLeader yields once, then raises; the rest is unimplemented."""

    async def Lookup(self, request: mesh_pb2.LookupRequest, context: Any) -> mesh_pb2.LookupResponse:  # noqa: N802
        raise RAISES[request.name]

    async def WatchLeader(self, request: mesh_pb2.WatchLeaderRequest,  # noqa: N802
                          context: Any) -> AsyncIterator[mesh_pb2.LeaderEvent]:
        yield mesh_pb2.LeaderEvent()
        raise ServiceError(grpc.StatusCode.ABORTED, "fell behind", "SUBSCRIBER_TOO_SLOW")


@pytest.fixture
async def served() -> AsyncIterator[tuple[mesh_pb2_grpc.MeshServiceStub, grpc.aio.Channel, CollectorRegistry]]:
    registry = CollectorRegistry()
    server = grpc.aio.server(interceptors=[ErrorInterceptor(registry)])
    mesh_pb2_grpc.add_MeshServiceServicer_to_server(Toy(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield mesh_pb2_grpc.MeshServiceStub(channel), channel, registry
    finally:
        await channel.close()
        await server.stop(0)


async def _error(call: Any) -> sdk.MabeamError:
    with pytest.raises(grpc.RpcError) as caught:
        await call
    return sdk.translate(caught.value)


@pytest.mark.parametrize("name", sorted(RAISES))
async def test_each_error_reaches_the_sdk_as_its_class_and_reason(served: Any, name: str) -> None:
    stub, _, _ = served
    error = await _error(stub.Lookup(mesh_pb2.LookupRequest(name=name)))
    cls, reason = EXPECTED[name]
    assert type(error) is cls and error.reason == reason, (name, repr(error), error.message)


async def test_details_survive_the_trip(served: Any) -> None:
    stub, _, _ = served
    fields = await _error(stub.Lookup(mesh_pb2.LookupRequest(name="fields")))
    assert fields.field_violations == {"name": "is empty", "tenant": "bad id"}
    leader = await _error(stub.Lookup(mesh_pb2.LookupRequest(name="leader")))
    assert leader.metadata == {"leader": "127.0.0.1:1"} and leader.retry_after == pytest.approx(0.25)
    etcd = await _error(stub.Lookup(mesh_pb2.LookupRequest(name="etcd")))
    assert etcd.retry_after is not None


async def test_an_unexpected_exception_is_internal_generic_and_logged(served: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    stub, _, _ = served
    with caplog.at_level(logging.ERROR, logger="mabeam.grpc"):
        error = await _error(stub.Lookup(mesh_pb2.LookupRequest(name="bug")))
    assert "secret-internal-detail" not in error.message and "logged" in error.message
    assert any(r.exc_info and "secret-internal-detail" in str(r.exc_info[1]) for r in caplog.records)


async def test_malformed_bytes_unimplemented_methods_and_streams(served: Any) -> None:
    stub, channel, _ = served
    raw = channel.unary_unary("/mabeam.v1.MeshService/Lookup", request_serializer=None, response_deserializer=None)
    malformed = await _error(raw(b"\x0a\x03\xff\xfe\xfd"))  # field 1 (tenant): invalid UTF-8
    assert isinstance(malformed, sdk.InvalidArgument) and malformed.reason == "MALFORMED_REQUEST"
    wrong_type = await _error(raw(b"\x0a\x10abc"))  # field 1 says 16 bytes, 3 follow
    assert isinstance(wrong_type, sdk.InvalidArgument) and wrong_type.reason == "MALFORMED_REQUEST"
    missing = await _error(stub.Ping(mesh_pb2.PingRequest()))
    assert isinstance(missing, sdk.Unimplemented) and missing.reason == "NOT_IMPLEMENTED"
    events = []
    with pytest.raises(grpc.RpcError) as caught:
        async for event in stub.WatchLeader(mesh_pb2.WatchLeaderRequest()):
            events.append(event)
    stream = sdk.translate(caught.value)
    assert len(events) == 1 and isinstance(stream, sdk.Aborted) and stream.reason == "SUBSCRIBER_TOO_SLOW"


async def test_rejections_are_counted_by_method_and_reason(served: Any) -> None:
    stub, _, registry = served
    for _ in range(3):
        await _error(stub.Lookup(mesh_pb2.LookupRequest(name="agent")))
    text = generate_latest(registry).decode()
    assert 'mabeam_rejected_requests_total{method="mabeam.v1.MeshService/Lookup",reason="NO_SUCH_AGENT"} 3.0' in text


def test_a_refused_bid_decodes_through_the_same_decoder() -> None:
    error = sdk.translate(coordinator_pb2.BidError(code=grpc.StatusCode.FAILED_PRECONDITION.value[0],
                                                   message="over budget", reason="INSUFFICIENT_FUNDS"))
    assert isinstance(error, sdk.FailedPrecondition) and error.reason == "INSUFFICIENT_FUNDS"
