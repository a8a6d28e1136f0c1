"""Client library for processes attached to their host's meshd (agentd, tools, tests).

    endpoint = await AttachedEndpoint.connect(plane_attach_address, agent_id="planner")
    await endpoint.register_name("planner")
    await endpoint.send("worker-1", b"task")            # cast
    reply = await endpoint.call("worker-1", b"q", timeout=2)
    async for message in endpoint:                       # receive
        if message.is_call:
            await endpoint.reply(message, b"answer")
    await endpoint.close()

The process talks only to its meshd (ipc:// by default, loopback TCP as a
fallback); meshd routes to local endpoints directly and to other hosts over
the priority channels. Errors come back typed: a call raises the
:class:`DataPlaneError` subclass; a bounced cast arrives as a message whose
``error`` is set. The mailbox holds ``max_pending`` messages; beyond that the
endpoint itself bounces messages to their sender with RESOURCE_EXHAUSTED.

Messages on ``bulk`` or above :data:`LANE_ABOVE` bytes travel on a second connection, the bulk
lane (own ZeroMQ context and I/O thread), in both directions, so a 64 MiB transfer never sits in
front of urgent messages on the main connection (bench/hol.py through two meshd). FIFO holds per
(sender, receiver, channel) as between nodes: a message above the chunk size may overtake smaller
ones on its channel, as chunked messages travel on ``bulk`` between nodes. Large received payloads
(above 64 KiB) are delivered as zero-copy ``memoryview``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from collections import deque

import grpc
import zmq
import zmq.asyncio

from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane import envelope as wire
from meshd.dataplane.endpoint import Destination, Group, Message
from meshd.dataplane.errors import DataPlaneError, DeadlineExceeded, InvalidArgument, error_from_code
from meshd.dataplane.registry import AgentRef, tenant_or_default

HEARTBEAT_EVERY = 1.0
#: Payloads above this many bytes go on the bulk lane whatever their channel (meshd's default chunk size).
LANE_ABOVE = 1 << 20
LANE_SUFFIX = b"~bulk"  # keep equal to attach_server.LANE_SUFFIX (the client does not import the server)
_ZERO_COPY_ABOVE = 65536


class AttachedEndpoint:
    """One endpoint of an attached process; create it with :meth:`connect`."""

    def __init__(self, address: str, agent_id: str | None = None, tenant: str | None = None,
                 max_pending: int = 1024) -> None:
        self.address = address
        self.tenant = tenant_or_default(tenant)
        self.ref = AgentRef(self.tenant, "", agent_id or "")
        self.max_pending = max_pending
        self._ctx = zmq.asyncio.Context(io_threads=1)
        routing_id = b"at" + os.urandom(8).hex().encode()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTING_ID, routing_id)
        self._sock.connect(address)
        self._lane_ctx = zmq.asyncio.Context(io_threads=1)
        self._lane = self._lane_ctx.socket(zmq.DEALER)
        self._lane.setsockopt(zmq.LINGER, 0)
        self._lane.setsockopt(zmq.ROUTING_ID, routing_id + LANE_SUFFIX)
        self._lane.connect(address)
        self._prefix = wire.batch_prefix("")
        self._ids = itertools.count(random.getrandbits(62) | 1)
        self._waiting: dict[int, asyncio.Future[pb.Envelope | Message]] = {}
        self._mailbox: deque[Message] = deque()
        self._arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._lane_reader: asyncio.Task[None] | None = None
        self.bounced = 0
        self.closed = False

    @classmethod
    async def connect(cls, address: str, agent_id: str | None = None, tenant: str | None = None, *,
                      max_pending: int = 1024, timeout: float = 5.0) -> AttachedEndpoint:
        """Attach to the meshd at ``address`` as ``agent_id`` (generated when None)."""
        endpoint = cls(address, agent_id, tenant, max_pending)
        endpoint._reader = asyncio.create_task(endpoint._read_loop(), name=f"attach-{agent_id}")
        endpoint._lane_reader = asyncio.create_task(endpoint._read_lane(), name=f"attach-lane-{agent_id}")
        try:
            result = await endpoint._system(pb.SYSTEM_OP_ATTACH, str(max_pending).encode(), timeout)
        except BaseException:
            await endpoint.close()
            raise
        endpoint.ref = AgentRef.from_proto(result.to_agent)
        return endpoint

    # ------------------------------------------------------------------ wire

    async def _write(self, env: pb.Envelope, payload: bytes) -> None:
        if self.closed:
            raise DataPlaneError("endpoint closed")
        header = wire.encode_batch(self._prefix, [env.SerializeToString()])
        sock = self._lane if env.channel == wire.BULK or len(payload) > LANE_ABOVE else self._sock
        await sock.send_multipart([header, payload], copy=len(payload) <= _ZERO_COPY_ABOVE)

    async def _read_lane(self) -> None:
        """Receive from the bulk lane: payloads above 64 KiB zero-copy."""
        while True:
            parts = await self._lane.recv_multipart(copy=False)
            frames = [p.buffer if i and len(p) > _ZERO_COPY_ABOVE else p.bytes for i, p in enumerate(parts)]
            try:
                batch, payloads = wire.decode_frames(frames)
            except wire.FrameError:
                continue
            for env, payload in zip(batch.envelopes, payloads, strict=True):
                await self._on_envelope(env, payload)

    async def _read_loop(self) -> None:
        last_beat = time.monotonic()
        beat = pb.Envelope(version=wire.VERSION, kind=wire.SYSTEM, channel=wire.CONTROL,
                           system_op=pb.SYSTEM_OP_HEARTBEAT)
        while True:
            if time.monotonic() - last_beat >= HEARTBEAT_EVERY:
                last_beat = time.monotonic()
                await self._write(beat, b"")
            if not await self._sock.poll(int(HEARTBEAT_EVERY * 1000), zmq.POLLIN):
                continue
            while True:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK).result()  # type: ignore[union-attr]
                except zmq.Again:
                    break
                try:
                    batch, payloads = wire.decode_frames(frames)
                except wire.FrameError:
                    continue
                for env, payload in zip(batch.envelopes, payloads, strict=True):
                    await self._on_envelope(env, payload)

    async def _on_envelope(self, env: pb.Envelope, payload: bytes) -> None:
        if env.kind == wire.SYSTEM:
            waiter = self._waiting.pop(env.correlation_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(env)
            return
        if env.kind in (wire.REPLY, wire.ERROR):
            waiter = self._waiting.pop(env.correlation_id, None)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(Message(env, payload))
                return
            if env.kind == wire.REPLY:
                return  # a late reply: the call already failed with DEADLINE_EXCEEDED
        if len(self._mailbox) >= self.max_pending:
            self.bounced += 1
            if env.kind in (wire.CAST, wire.CALL):
                back = pb.Envelope(version=wire.VERSION, id=next(self._ids), kind=wire.ERROR, channel=env.channel,
                                   correlation_id=env.id, error_code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                                   error_message=f"mailbox of {self.ref.agent_id!r} is full")
                back.to_agent.CopyFrom(env.sender)
                await self._write(back, b"")
            return
        self._mailbox.append(Message(env, payload))
        self._arrived.set()

    async def _system(self, op: int, payload: bytes, timeout: float = 5.0) -> pb.Envelope:
        env = pb.Envelope(version=wire.VERSION, id=next(self._ids), kind=wire.SYSTEM, channel=wire.CONTROL,
                          system_op=op, tenant=self.tenant)
        env.sender.agent_id = self.ref.agent_id
        future: asyncio.Future[pb.Envelope | Message] = asyncio.get_running_loop().create_future()
        self._waiting[env.id] = future
        try:
            await self._write(env, payload)
            async with asyncio.timeout(timeout):
                result = await future
        finally:
            self._waiting.pop(env.id, None)
        assert isinstance(result, pb.Envelope)
        if result.error_code:
            raise error_from_code(result.error_code, result.error_message)
        return result

    # ------------------------------------------------------------------ operations

    def _envelope(self, kind: int, to: Destination, channel: int | str | None, acknowledged: bool = False
                  ) -> pb.Envelope:
        env = pb.Envelope(version=wire.VERSION, id=next(self._ids), kind=kind, channel=wire.parse_channel(channel),
                          tenant=self.tenant, flags=wire.FLAG_ACK if acknowledged else 0,
                          sent_unix_ns=time.time_ns())
        if isinstance(to, str):
            env.to_name = to
        elif isinstance(to, AgentRef):
            env.to_agent.CopyFrom(to.to_proto())
        elif isinstance(to, Group):
            env.to_group.CopyFrom(to.to_proto())
        else:
            raise InvalidArgument(f"bad destination {to!r}")
        return env

    async def send(self, to: Destination, payload: bytes, *, channel: int | str | None = None,
                   acknowledged: bool = False) -> int:
        """Send a cast through meshd; returns its id (errors arrive later as ERROR messages)."""
        env = self._envelope(wire.CAST, to, channel, acknowledged)
        await self._write(env, payload)
        return env.id

    async def call(self, to: Destination, payload: bytes, *, timeout: float = 5.0,
                   channel: int | str | None = None) -> Message:
        """Call and wait for the reply; raises the typed error (DeadlineExceeded after ``timeout``)."""
        env = self._envelope(wire.CALL, to, channel)
        env.deadline_unix_ms = int((time.time() + timeout) * 1000)
        future: asyncio.Future[pb.Envelope | Message] = asyncio.get_running_loop().create_future()
        self._waiting[env.id] = future
        try:
            await self._write(env, payload)
            try:
                async with asyncio.timeout(timeout):
                    result = await future
            except TimeoutError:
                raise DeadlineExceeded("no reply before the deadline") from None
        finally:
            self._waiting.pop(env.id, None)
        assert isinstance(result, Message)
        if result.kind == wire.ERROR:
            raise error_from_code(result.envelope.error_code, result.envelope.error_message)
        return result

    async def reply(self, request: Message, payload: bytes) -> None:
        """Answer a call (ignored for casts)."""
        if not request.is_call:
            return
        env = self._envelope(wire.REPLY, request.sender, request.channel)
        env.correlation_id = request.id
        await self._write(env, payload)

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message (TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while not self._mailbox:
                self._arrived.clear()
                await self._arrived.wait()
        return self._mailbox.popleft()

    def __aiter__(self) -> AttachedEndpoint:
        return self

    async def __anext__(self) -> Message:
        if self.closed:
            raise StopAsyncIteration
        return await self.receive()

    async def register_name(self, name: str) -> None:
        """Register a cluster-unique name for this endpoint (ALREADY_EXISTS when taken)."""
        await self._system(pb.SYSTEM_OP_REGISTER_NAME, name.encode())

    async def unregister_name(self, name: str) -> None:
        """Remove a name this endpoint registered."""
        await self._system(pb.SYSTEM_OP_UNREGISTER_NAME, name.encode())

    async def join_group(self, group: str) -> None:
        """Join a group."""
        await self._system(pb.SYSTEM_OP_JOIN_GROUP, group.encode())

    async def leave_group(self, group: str) -> None:
        """Leave a group."""
        await self._system(pb.SYSTEM_OP_LEAVE_GROUP, group.encode())

    async def close(self) -> None:
        """Detach (names and groups are removed by meshd) and release the socket and context."""
        if not self.closed and self._reader is not None and not self._reader.done():
            with contextlib.suppress(DataPlaneError, TimeoutError, zmq.ZMQError):
                await self._system(pb.SYSTEM_OP_DETACH, b"", timeout=1.0)
        self.closed = True
        for reader in (self._reader, self._lane_reader):
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
                    await reader
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(DataPlaneError("endpoint closed"))
        self._sock.close(linger=0)
        self._lane.close(linger=0)
        self._ctx.term()
        self._lane_ctx.term()
