"""meshd's side of local attach: a ROUTER on ``ipc://`` (or loopback TCP) for processes on this host.

An attached process (see :mod:`meshd.dataplane.attach`) connects a DEALER and
speaks the same batch format as the channels. SYSTEM envelopes carry the
attach operations (ATTACH, DETACH, REGISTER_NAME, UNREGISTER_NAME, JOIN_GROUP,
LEAVE_GROUP, HEARTBEAT); each is answered by a SYSTEM_OP_RESULT envelope whose
``correlation_id`` names the request. Other envelopes are routed by the data
plane with the sender forced to the attached endpoint (no spoofing). Messages
for the endpoint go back over the same connection; ROUTER_MANDATORY turns a
full or vanished connection into RESOURCE_EXHAUSTED / NOT_FOUND for the sender.
An endpoint silent for ``EXPIRE_AFTER`` seconds (clients heartbeat every
second) is detached and its names and groups are removed.

**Bulk lane** (bench/hol.py through two meshd): an attached process may connect a second DEALER
whose routing id is its main one + :data:`LANE_SUFFIX`. Messages it sends there count as the
endpoint's own; messages for the endpoint on ``bulk`` or above ``chunk_size`` go back on it (the main
connection when the lane is not connected). One ipc connection carrying a 64 MiB message would
otherwise hold every urgent message behind it for the whole transfer — the head-of-line blocking the
channels remove between nodes. Frames above 64 KiB are received zero-copy (a 64 MiB copy stalled the
loop ~15 ms), and the socket accepts messages up to ``max_message_size``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
import zmq

from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane import envelope as wire
from meshd.dataplane import transport
from meshd.dataplane.endpoint import Destination, Group, Message
from meshd.dataplane.errors import DataPlaneError, NotFound
from meshd.dataplane.registry import AgentRef, tenant_or_default

if TYPE_CHECKING:
    from meshd.dataplane.plane import DataPlane

log = logging.getLogger(__name__)

EXPIRE_AFTER = 5.0
#: Routing-id suffix of an attached endpoint's bulk lane (see the module docstring).
LANE_SUFFIX = b"~bulk"
_ZERO_COPY_ABOVE = 65536
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NAME_OPS = (pb.SYSTEM_OP_REGISTER_NAME, pb.SYSTEM_OP_UNREGISTER_NAME, pb.SYSTEM_OP_JOIN_GROUP,
             pb.SYSTEM_OP_LEAVE_GROUP)


class _AttachedMailbox:
    """The data plane's handle on an attached endpoint: delivering = sending over the attach socket."""

    def __init__(self, server: AttachServer, routing_id: bytes, ref: AgentRef) -> None:
        self.server = server
        self.routing_id = routing_id
        self.ref = ref
        self.names: set[str] = set()
        self.groups: set[str] = set()
        self.last_seen = time.monotonic()

    def offer(self, message: Message) -> bool:
        """Forward one message; False when the connection is full, NotFound when it is gone."""
        payload = message.payload
        lane = message.envelope.channel == wire.BULK or len(payload) > self.server.lane_above
        return self.server.forward(self, message.envelope.SerializeToString(), payload, lane)


def destination_of(env: pb.Envelope, tenant: str) -> Destination:
    """The destination an envelope's ``to`` oneof names (NotFound when it names none)."""
    which = env.WhichOneof("to")
    if which == "to_name":
        return env.to_name
    if which == "to_agent":
        ref = env.to_agent
        return AgentRef(tenant_or_default(ref.tenant or tenant), ref.node_id, ref.agent_id)
    if which == "to_group":
        return Group(env.to_group.group, "one" if env.to_group.mode == pb.GROUP_MODE_ONE else "all")
    raise NotFound("envelope has no destination")


class AttachServer:
    """Serves attached processes for one :class:`DataPlane`."""

    def __init__(self, plane: DataPlane, ctx: zmq.Context) -> None:
        self.plane = plane
        self.sock = transport.make_router(ctx, rcvhwm=plane.config.rcvhwm, sndhwm=plane.config.sndhwm,
                                          max_msg=plane.config.max_message_size + (1 << 20), mandatory=True)
        self.lane_above = plane.config.chunk_size
        self.by_routing_id: dict[bytes, _AttachedMailbox] = {}
        self._prefix = wire.batch_prefix(plane.node_id)
        self._readiness: transport.Readiness | None = None
        self.rejected = plane.rejected

    def bind(self, address: str) -> str:
        """Bind the attach socket; returns the concrete address."""
        self.sock.bind(address)
        return self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def close(self) -> None:
        """Close the socket (the context is terminated by the data plane)."""
        if self._readiness is not None:
            self._readiness.close()
        self.sock.close(linger=0)

    async def run(self, tg: asyncio.TaskGroup) -> None:
        """Drain the attach socket forever (operations needing the registry run as tasks in ``tg``)."""
        self._readiness = transport.Readiness()
        self._readiness.watch(self.sock)
        event = self._readiness.event
        last_expiry = time.monotonic()
        while True:
            event.clear()
            taken = 0
            while taken < 256:
                frames = self._recv()
                if frames is None:
                    break
                taken += 1
                self._on_frames(frames, tg)
            if time.monotonic() - last_expiry > 1.0:
                last_expiry = time.monotonic()
                self._expire(tg)
            if taken >= 256:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await event.wait()

    def _recv(self) -> list[Any] | None:
        """One multipart message (routing id first), frames above 64 KiB as zero-copy buffers; None when empty."""
        sock = self.sock
        if not sock.getsockopt(_EVENTS) & _POLLIN:
            return None
        try:
            frame = sock.recv(_NOBLOCK, copy=False)
            frames: list[Any] = [frame.bytes]
            while frame.more:
                frame = sock.recv(_NOBLOCK, copy=False)
                frames.append(frame.buffer if len(frame) > _ZERO_COPY_ABOVE else frame.bytes)
        except zmq.Again:
            return None
        return frames

    def _on_frames(self, frames: list[Any], tg: asyncio.TaskGroup) -> None:
        routing_id = frames[0]
        try:
            batch, payloads = wire.decode_frames(frames[1:])
        except wire.FrameError as exc:
            self.rejected["attach_" + exc.reason] += 1
            return
        mailbox = self.by_routing_id.get(routing_id)
        if mailbox is None and routing_id.endswith(LANE_SUFFIX):
            mailbox = self.by_routing_id.get(routing_id[:-len(LANE_SUFFIX)])  # the endpoint's bulk lane
        if mailbox is not None:
            mailbox.last_seen = time.monotonic()
        for env, payload in zip(batch.envelopes, payloads, strict=True):
            if env.kind == wire.SYSTEM:
                self._on_system(routing_id, mailbox, env, payload, tg)
                mailbox = self.by_routing_id.get(routing_id)
            elif mailbox is None:
                self._result(routing_id, env.id, grpc.StatusCode.FAILED_PRECONDITION, "not attached")
            else:
                self._on_message(mailbox, env, payload)

    def _on_message(self, mailbox: _AttachedMailbox, env: pb.Envelope, payload: bytes) -> None:
        ref = mailbox.ref
        env.tenant = ref.tenant
        env.sender.CopyFrom(ref.to_proto())
        env.version = wire.VERSION
        env.flags &= wire.FLAG_ACK
        if not env.channel:
            env.channel = wire.NORMAL
        timeout = self.plane.config.default_call_timeout
        if env.kind == wire.CALL and env.deadline_unix_ms:
            timeout = max(0.001, env.deadline_unix_ms / 1000 - time.time())
        try:
            to = destination_of(env, ref.tenant)
            self.plane.originate(env, payload, to, caller=ref, timeout=timeout)
        except DataPlaneError as exc:
            if env.kind in (wire.CAST, wire.CALL):
                back = pb.Envelope(version=wire.VERSION, kind=wire.ERROR, channel=env.channel, tenant=ref.tenant,
                                   correlation_id=env.id, error_code=exc.code_value, error_message=exc.message)
                back.to_agent.CopyFrom(ref.to_proto())
                self.forward(mailbox, back.SerializeToString(), b"")

    def _on_system(self, routing_id: bytes, mailbox: _AttachedMailbox | None, env: pb.Envelope, payload: bytes,
                   tg: asyncio.TaskGroup) -> None:
        op = env.system_op
        if op == pb.SYSTEM_OP_HEARTBEAT:
            return
        if op == pb.SYSTEM_OP_ATTACH:
            self._attach(routing_id, env)
            return
        if mailbox is None:
            self._result(routing_id, env.id, grpc.StatusCode.FAILED_PRECONDITION, "not attached")
            return
        if op == pb.SYSTEM_OP_DETACH:
            self._detach(mailbox, tg)
            self._result(routing_id, env.id, grpc.StatusCode.OK, "")
        elif op in _NAME_OPS:
            tg.create_task(self._name_op(mailbox, op, payload.decode("utf-8", "replace"), env.id))
        else:
            self._result(routing_id, env.id, grpc.StatusCode.INVALID_ARGUMENT, f"unknown system op {op}")

    def _attach(self, routing_id: bytes, env: pb.Envelope) -> None:
        plane = self.plane
        tenant = tenant_or_default(env.tenant)
        agent_id = env.sender.agent_id or f"att-{routing_id.hex()}"
        key = (tenant, agent_id)
        existing = plane.endpoints.get(key)
        if existing is not None and getattr(existing, "routing_id", None) != routing_id:
            self._result(routing_id, env.id, grpc.StatusCode.ALREADY_EXISTS, f"endpoint {agent_id!r} exists")
            return
        ref = AgentRef(tenant, plane.node_id, agent_id)
        mailbox = _AttachedMailbox(self, routing_id, ref)
        self.by_routing_id[routing_id] = mailbox
        plane.endpoints[key] = mailbox
        self._result(routing_id, env.id, grpc.StatusCode.OK, "", ref)

    def _detach(self, mailbox: _AttachedMailbox, tg: asyncio.TaskGroup) -> None:
        self.by_routing_id.pop(mailbox.routing_id, None)
        self.plane.close_endpoint(mailbox)
        if mailbox.names or mailbox.groups:
            tg.create_task(self._cleanup(mailbox))

    async def _cleanup(self, mailbox: _AttachedMailbox) -> None:
        registry, ref = self.plane.registry, mailbox.ref
        for name in mailbox.names:
            with contextlib.suppress(Exception):
                await registry.unregister_name(ref.tenant, name, ref)
        for group in mailbox.groups:
            with contextlib.suppress(Exception):
                await registry.leave_group(ref.tenant, group, ref)

    def _expire(self, tg: asyncio.TaskGroup) -> None:
        horizon = time.monotonic() - EXPIRE_AFTER
        for mailbox in [m for m in self.by_routing_id.values() if m.last_seen < horizon]:
            log.info("attached endpoint %s went silent; detaching", mailbox.ref.agent_id)
            self._detach(mailbox, tg)

    async def _name_op(self, mailbox: _AttachedMailbox, op: int, name: str, request_id: int) -> None:
        registry, ref = self.plane.registry, mailbox.ref
        try:
            if op == pb.SYSTEM_OP_REGISTER_NAME:
                await registry.register_name(ref.tenant, name, ref)
                mailbox.names.add(name)
            elif op == pb.SYSTEM_OP_UNREGISTER_NAME:
                await registry.unregister_name(ref.tenant, name, ref)
                mailbox.names.discard(name)
            elif op == pb.SYSTEM_OP_JOIN_GROUP:
                await registry.join_group(ref.tenant, name, ref)
                mailbox.groups.add(name)
            else:
                await registry.leave_group(ref.tenant, name, ref)
                mailbox.groups.discard(name)
        except DataPlaneError as exc:
            self._result(mailbox.routing_id, request_id, exc.code, exc.message)
            return
        except Exception as exc:  # the registry is outside our boundary: report, don't crash the loop
            self._result(mailbox.routing_id, request_id, grpc.StatusCode.INTERNAL, str(exc)[:200])
            return
        self._result(mailbox.routing_id, request_id, grpc.StatusCode.OK, "")

    def _result(self, routing_id: bytes, request_id: int, code: grpc.StatusCode, message: str,
                ref: AgentRef | None = None) -> None:
        env = pb.Envelope(version=wire.VERSION, kind=wire.SYSTEM, system_op=pb.SYSTEM_OP_RESULT,
                          channel=wire.CONTROL, correlation_id=request_id, error_code=int(code.value[0]),
                          error_message=message)
        if ref is not None:
            env.to_agent.CopyFrom(ref.to_proto())
        self._send(routing_id, env.SerializeToString(), b"")

    def forward(self, mailbox: _AttachedMailbox, env_bytes: bytes, payload: bytes | memoryview,
                lane: bool = False) -> bool:
        """Send one envelope to an attached endpoint; False when full, NotFound when it is gone.

        ``lane``: on the endpoint's bulk lane when it is connected (else on the main connection).
        """
        if lane:
            try:
                self._send(mailbox.routing_id + LANE_SUFFIX, env_bytes, payload)
                return True
            except zmq.Again:
                return False
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
        try:
            self._send(mailbox.routing_id, env_bytes, payload)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self.by_routing_id.pop(mailbox.routing_id, None)
                self.plane.close_endpoint(mailbox)
                raise NotFound(f"endpoint {mailbox.ref.agent_id!r} disconnected") from None
            raise
        return True

    def _send(self, routing_id: bytes, env_bytes: bytes, payload: bytes | memoryview) -> None:
        header = wire.encode_batch(self._prefix, [env_bytes])
        transport.send_frames(self.sock, [routing_id, header, payload])
        if self._readiness is not None:
            # Sending may consume the edge of the socket's FD: make the loop look again.
            self._readiness.event.set()

    def statistics(self) -> dict[str, Any]:
        """Snapshot: attached endpoints."""
        return {"attached": len(self.by_routing_id)}
