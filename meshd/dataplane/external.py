"""External agents: ``MeshService.AttachAgent``, one bidirectional stream per agent in any language.

An external agent is another kind of local endpoint: a :class:`LocalEndpoint`
mailbox (bounded by ``max_pending``, so a slow agent's senders get
RESOURCE_EXHAUSTED like any agent's) whose messages are handed to the stream
one at a time. The next cast or call goes out only after the agent answered
the previous one with ``handled``, so the agent sees its messages in order and
one at a time, as agentd's agents do. Casts and calls the agent makes travel on
the same stream and carry its address as their sender. When the stream ends the
endpoint closes, its names and groups are removed, and every message still
waiting (and the one being handled) bounces to its sender with UNAVAILABLE.
The contract is in ``proto/mabeam/v1/external_agent.proto``; the SDKs in
``clients/`` are its users (docs/sdks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any

import grpc

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import DataPlaneError, Unavailable
from mabeam.dataplane.message import AgentRef, Message, destination_of
from mabeam.errors import ServiceError, code_from_value
from mabeam.security.context import tenant_for
from mabeam.v1 import external_agent_pb2 as pb
from meshd.dataplane.endpoint import LocalEndpoint
from meshd.dataplane.plane import DataPlane

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 1024
MAX_PENDING_LIMIT = 65536
#: Outbound calls one agent may have in flight; beyond it a call is answered RESOURCE_EXHAUSTED at once.
MAX_OUTBOUND_CALLS = 1024
_OK = 0


def _protocol_error(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message, "AGENT_PROTOCOL")


class ExternalAgentSession:
    """One attached external agent: its endpoint, the delivery pump and the outbound traffic."""

    def __init__(self, plane: DataPlane, endpoint: LocalEndpoint) -> None:
        self.plane = plane
        self.endpoint = endpoint
        self.out: asyncio.Queue[pb.AgentStreamOut | BaseException | None] = asyncio.Queue()
        self._handled: asyncio.Future[pb.AgentHandled] | None = None
        self._in_flight: Message | None = None
        self._delivery_id = 0
        self._calls = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- meshd -> agent: one delivery at a time --------------------------------------------------

    async def pump(self) -> None:
        """Hand the mailbox to the agent in order, waiting for ``handled`` after each cast and call."""
        loop = asyncio.get_running_loop()
        while True:
            message = await self.endpoint.receive()
            envelope = message.envelope
            if envelope.kind == wire.ERROR:  # a cast of ours bounced: tell the agent, nothing to wait for
                self._deliver(message)
                continue
            if envelope.kind == wire.CALL and envelope.deadline_unix_ms \
                    and time.time() * 1000 > envelope.deadline_unix_ms:
                self.plane.drops["expired_call"] += 1  # its caller already has DEADLINE_EXCEEDED
                continue
            self._handled = loop.create_future()
            self._in_flight = message
            self._deliver(message)
            handled = await self._handled
            self._in_flight = None
            if envelope.kind == wire.CALL:
                self._answer(message, handled)

    def _deliver(self, message: Message) -> None:
        self._delivery_id += 1
        self.out.put_nowait(pb.AgentStreamOut(delivery=pb.AgentDelivery(
            delivery_id=self._delivery_id, envelope=message.envelope, payload=bytes(message.payload))))

    def _answer(self, request: Message, handled: pb.AgentHandled) -> None:
        try:
            if handled.error_code:
                self.plane.router.bounce(request.envelope, DataPlaneError(handled.error_message,
                                                                          code=code_from_value(handled.error_code)))
            else:
                self.endpoint.reply(request, handled.reply)
        except DataPlaneError as error:  # the caller's node left, or the reply is too large
            log.info("reply from external agent %s not sent: %s", self.endpoint.ref.agent_id, error)

    def handled(self, handled: pb.AgentHandled) -> None:
        """The agent answered its current delivery (a protocol error if it names another one)."""
        if self._handled is None or self._handled.done() or handled.delivery_id != self._delivery_id:
            raise _protocol_error(f"handled names delivery {handled.delivery_id}, but the delivery awaiting "
                                  f"an answer is {self._delivery_id if self._in_flight else 'none'}")
        self._handled.set_result(handled)

    # -- agent -> mesh --------------------------------------------------------------------------

    def outbound(self, request: pb.AgentOutbound) -> None:
        """A cast or call from the agent; its result is queued on the stream when it is known."""
        if request.call and self._calls >= MAX_OUTBOUND_CALLS:
            self._result(request.request_id, DataPlaneError(
                f"more than {MAX_OUTBOUND_CALLS} calls in flight", code=grpc.StatusCode.RESOURCE_EXHAUSTED))
            return
        task = asyncio.create_task(self._outbound(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _outbound(self, request: pb.AgentOutbound) -> None:
        endpoint = self.endpoint
        try:
            to = destination_of(request, endpoint.ref.tenant, what="the outbound message")
            if request.call:
                self._calls += 1
                try:
                    timeout = request.timeout_ms / 1000 if request.timeout_ms else None
                    reply = await endpoint.call(to, request.payload, timeout=timeout, channel=request.channel,
                                                traceparent=request.traceparent)
                finally:
                    self._calls -= 1
                self.out.put_nowait(pb.AgentStreamOut(result=pb.AgentOutboundResult(
                    request_id=request.request_id, payload=bytes(reply.payload), responder=reply.envelope.sender)))
            else:
                ids = await endpoint.send(to, request.payload, channel=request.channel,
                                          traceparent=request.traceparent)
                self.out.put_nowait(pb.AgentStreamOut(result=pb.AgentOutboundResult(
                    request_id=request.request_id, message_ids=ids)))
        except DataPlaneError as error:
            self._result(request.request_id, error)

    def _result(self, request_id: int, error: DataPlaneError) -> None:
        self.out.put_nowait(pb.AgentStreamOut(result=pb.AgentOutboundResult(
            request_id=request_id, code=error.code_value, message=error.message or error.code.name)))

    # -- the end ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the endpoint and bounce what the agent will never answer (UNAVAILABLE)."""
        for task in self._tasks:
            task.cancel()
        waiting = list(iter(self.endpoint.receive_nowait, None))
        self.endpoint.close()
        gone = Unavailable(f"external agent {self.endpoint.ref.agent_id!r} detached")
        for message in ([self._in_flight] if self._in_flight is not None else []) + waiting:
            if message.envelope.kind in (wire.CAST, wire.CALL):
                self.plane.router.bounce(message.envelope, gone)


async def _read_in(session: ExternalAgentSession, requests: AsyncIterator[pb.AgentStreamIn]) -> None:
    """Read the agent's messages until it half-closes; a protocol error ends the stream."""
    try:
        async for message in requests:
            which = message.WhichOneof("body")
            if which == "handled":
                session.handled(message.handled)
            elif which == "outbound":
                session.outbound(message.outbound)
            else:
                raise _protocol_error(f"unexpected {which or 'empty'} message after attach")
        session.out.put_nowait(None)
    except ServiceError as error:
        session.out.put_nowait(error)
    except Exception as error:  # noqa: BLE001 - the stream broke under us (client gone): end it
        log.info("external agent stream ended: %r", error)
        session.out.put_nowait(None)


async def attach_agent(plane: DataPlane, requests: AsyncIterator[pb.AgentStreamIn],
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.AgentStreamOut]:
    """MeshService.AttachAgent: see the module docstring and external_agent.proto."""
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("body") != "attach":
        raise _protocol_error("the first message of AttachAgent must be `attach`")
    attach = first.attach
    tenant = tenant_for(attach.tenant)  # the token's tenant; another only for an admin
    max_pending = min(attach.max_pending or DEFAULT_MAX_PENDING, MAX_PENDING_LIMIT)
    endpoint = plane.open_endpoint(attach.agent_id or None, tenant, max_pending=max_pending)
    session = ExternalAgentSession(plane, endpoint)
    names: list[str] = []
    groups: list[str] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        await register(plane, tenant, endpoint.ref, attach.names, attach.groups, names, groups)
        # A cancelled or broken RPC ends the loop below even when no task notices it otherwise.
        context.add_done_callback(lambda _: session.out.put_nowait(None))
        yield pb.AgentStreamOut(attached=pb.AgentAttached(endpoint=endpoint.ref.to_proto()))
        tasks = [asyncio.create_task(session.pump()), asyncio.create_task(_read_in(session, requests))]
        while True:
            item = await session.out.get()
            if item is None:
                return
            if isinstance(item, ServiceError):
                raise item
            assert isinstance(item, pb.AgentStreamOut)
            yield item
    finally:
        await run_detached(_detach(plane, session, tasks, tenant, names, groups))


_CLEANUPS: set[asyncio.Task[None]] = set()


async def run_detached(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run a stream's cleanup in a task of its own and wait for it.

    A cancellation of the waiting handler (a second one, while it cleans up after the first, or the
    loop's teardown) then cannot stop the cleanup half-way and leave names registered.
    """
    task = asyncio.create_task(cleanup)
    _CLEANUPS.add(task)
    task.add_done_callback(_CLEANUPS.discard)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)


async def register(plane: DataPlane, tenant: str, ref: AgentRef, names: Iterable[str], groups: Iterable[str],
                   registered_names: list[str], joined_groups: list[str]) -> None:
    """Register a stream's names and join its groups, recording each *before* its write.

    A cancellation can arrive after etcd committed a write but before the call returned (meshd waits for
    its own view to catch up): recorded first, the name still goes in :func:`release`; releasing a name
    the endpoint does not own (taken by another) is a no-op.
    """
    for name in names:
        registered_names.append(name)
        await plane.registry.register_name(tenant, name, ref)
    for group in groups:
        joined_groups.append(group)
        await plane.registry.join_group(tenant, group, ref)


async def release(plane: DataPlane, tenant: str, ref: AgentRef, names: list[str], groups: list[str]) -> None:
    """Remove a closed endpoint's names and leave its groups; failures are logged (the lease removes them)."""
    for name in names:
        try:
            await plane.registry.unregister_name(tenant, name, ref)
        except Exception as error:  # noqa: BLE001 - logged; the name still goes with the node's lease
            log.warning("endpoint %s: name %r not removed: %r", ref.agent_id, name, error)
    for group in groups:
        try:
            await plane.registry.leave_group(tenant, group, ref)
        except Exception as error:  # noqa: BLE001
            log.warning("endpoint %s: group %r not left: %r", ref.agent_id, group, error)


async def _detach(plane: DataPlane, session: ExternalAgentSession, tasks: list[asyncio.Task[Any]], tenant: str,
                  names: list[str], groups: list[str]) -> None:
    """Stop the session's tasks, close its endpoint (bouncing what is left) and remove its names and groups."""
    ref = session.endpoint.ref
    log.info("external agent %s detaching (names %s)", ref.agent_id, names)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    session.close()
    await release(plane, tenant, ref, names, groups)
