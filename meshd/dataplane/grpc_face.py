"""The gRPC face of the data plane: ``MeshService.Send``, ``Call``, ``Subscribe`` and ``AttachAgent``.

meshd's MeshService servicer either inherits :class:`DataPlaneServicerMixin`
(put it before the generated ``MeshServiceServicer`` base so its methods win)
and sets ``self.dataplane``, or calls :func:`send`, :func:`call` and
:func:`subscribe` from its own methods. Typed data-plane errors are raised as
they are: they are :class:`~mabeam.errors.ServiceError` subclasses, which the
daemon's error interceptor answers with their status and reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from mabeam.dataplane.errors import InvalidArgument
from mabeam.dataplane.message import AgentRef, destination_of
from mabeam.security.context import tenant_for
from mabeam.v1 import dataplane_pb2 as pb
from mabeam.v1 import external_agent_pb2
from meshd.dataplane.external import attach_agent, register, release, run_detached
from meshd.dataplane.plane import DataPlane

MAX_PENDING_LIMIT = 65536


def _sender(plane: DataPlane, tenant: str, agent_id: str) -> AgentRef:
    return AgentRef(tenant, plane.node_id, agent_id)


async def send(plane: DataPlane, request: pb.SendRequest, context: grpc.aio.ServicerContext) -> pb.SendResponse:
    """MeshService.Send: a cast (or, with ``reply_to_id``, the reply to a call)."""
    tenant = tenant_for(request.tenant)
    sender = _sender(plane, tenant, request.sender_agent_id)
    if request.reply_to_id:
        if request.WhichOneof("to") != "to_agent":
            raise InvalidArgument("a reply (reply_to_id) must name the caller in to_agent")
        caller = destination_of(request, tenant)
        assert isinstance(caller, AgentRef)
        message_id = plane.reply(sender, caller, request.reply_to_id, request.payload,
                                 channel=request.channel)
        return pb.SendResponse(message_ids=[message_id])
    ids = await plane.cast(sender, destination_of(request, tenant), request.payload, channel=request.channel,
                           acknowledged=request.acknowledged, traceparent=request.traceparent)
    return pb.SendResponse(message_ids=ids)


async def call(plane: DataPlane, request: pb.CallRequest, context: grpc.aio.ServicerContext) -> pb.CallResponse:
    """MeshService.Call: wait for one reply; the RPC deadline bounds the call's deadline."""
    tenant = tenant_for(request.tenant)
    timeout = request.timeout_ms / 1000 if request.timeout_ms else plane.config.default_call_timeout
    remaining = context.time_remaining()
    if remaining is not None:
        timeout = min(timeout, max(0.001, remaining))
    reply = await plane.call(_sender(plane, tenant, request.sender_agent_id), destination_of(request, tenant),
                             request.payload, timeout=timeout, channel=request.channel,
                             traceparent=request.traceparent)
    return pb.CallResponse(payload=bytes(reply.payload), responder=reply.envelope.sender, message_id=reply.id)


async def subscribe(plane: DataPlane, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
                    ) -> AsyncIterator[pb.SubscribeResponse]:
    """MeshService.Subscribe: open an endpoint, register its names and groups, stream its messages.

    The endpoint, its names and its groups are removed when the stream ends.
    """
    tenant = tenant_for(request.tenant)
    max_pending = min(request.max_pending or plane.config.default_max_pending, MAX_PENDING_LIMIT)
    endpoint = plane.open_endpoint(request.agent_id or None, tenant, max_pending=max_pending)
    names: list[str] = []
    groups: list[str] = []
    try:
        await register(plane, tenant, endpoint.ref, request.names, request.groups, names, groups)
        yield pb.SubscribeResponse(endpoint=endpoint.ref.to_proto())
        while True:
            message = await endpoint.receive()
            yield pb.SubscribeResponse(envelope=message.envelope, payload=bytes(message.payload))
    finally:
        endpoint.close()
        await run_detached(release(plane, tenant, endpoint.ref, names, groups))

class DataPlaneServicerMixin:
    """Send/Call/Subscribe for the MeshService servicer; the class using it sets ``self.dataplane``."""

    dataplane: DataPlane

    async def Send(self, request: pb.SendRequest, context: grpc.aio.ServicerContext) -> pb.SendResponse:  # noqa: N802
        """MeshService.Send."""
        return await send(self.dataplane, request, context)

    async def Call(self, request: pb.CallRequest, context: grpc.aio.ServicerContext) -> pb.CallResponse:  # noqa: N802
        """MeshService.Call."""
        return await call(self.dataplane, request, context)

    async def Subscribe(self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext  # noqa: N802
                        ) -> AsyncIterator[pb.SubscribeResponse]:
        """MeshService.Subscribe."""
        async for response in subscribe(self.dataplane, request, context):
            yield response

    async def AttachAgent(self, requests: AsyncIterator[external_agent_pb2.AgentStreamIn],  # noqa: N802
                          context: grpc.aio.ServicerContext) -> AsyncIterator[external_agent_pb2.AgentStreamOut]:
        """MeshService.AttachAgent: an external agent (meshd.dataplane.external)."""
        async for response in attach_agent(self.dataplane, requests, context):
            yield response
