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

The endpoint works like the channels between nodes (bench/dataplane.py through two meshd): plain
ZeroMQ sockets read from their FD's reader callback with NOBLOCK (no future per receive), envelopes
built from a cached template per flow, and outgoing messages coalesced into one batch per loop turn
(packed when small; a call or reply on an idle connection goes at once). ``send`` returns without
waiting unless ``max_queued`` messages are already waiting for the socket.

Messages on ``bulk`` or above :data:`LANE_ABOVE` bytes travel on a second connection, the bulk
lane (own ZeroMQ context and I/O thread), in both directions, so a 64 MiB transfer never sits in
front of urgent messages on the main connection (bench/hol.py through two meshd). FIFO holds per
(sender, receiver, channel) as between nodes: a message above the chunk size may overtake smaller
ones on its channel, as chunked messages travel on ``bulk`` between nodes. Large received payloads
(above 64 KiB) are delivered as zero-copy ``memoryview``s.

**Healing.** meshd may detach an endpoint (it stayed silent past meshd's
expiry, or meshd restarted); meshd then answers its next message with a
SYSTEM_OP_DETACHED notice. The endpoint re-attaches by itself with backoff
(same agent id and connection) and registers the names and groups it holds
again. While it is detached, sends and calls fail fast with :class:`Detached`
(UNAVAILABLE, reason DETACHED), calls in flight fail with it too, and name and
group operations wait for the re-attach (up to their timeout). A name taken by
another owner meanwhile (while re-registering, or reported by meshd with
SYSTEM_OP_NAME_LOST after this node's lease had lapsed) is dropped from the
endpoint's names and reported to ``on_name_lost(name, why)``, never silently.
``events`` counts detachments, re-attaches and lost names.

**Throttling** (tenant rate quotas, docs/security.md "Quota semantics"). When this endpoint's tenant is over
its message or byte rate quota on the meshd, meshd drops the cast (or refuses the call) and answers with a
QUOTA_EXCEEDED ERROR carrying a throttle (``retry_after_ms``) and the limit (``error_metadata``: ``tenant``,
``quota``, ``limit``, ``used``). The endpoint then *paces* itself (:class:`_Pacer`, a mirror of meshd's
token bucket): :meth:`send` and :meth:`call` wait until the message fits the quota (so a loop sending "as
fast as it can" runs at the quota and sleeps instead of burning a core on casts meshd would drop);
:meth:`send_nowait` raises :class:`QuotaExceeded` (with ``retry_after_s``) instead of waiting; replies are
never paced (meshd does not count them). The refusal still arrives as an ERROR message (a call raises it).
Pacing ends :data:`PACE_FOR` seconds after the last throttle, so a raised quota is found again. An endpoint
that ignores throttles is muted by meshd (what it sends is dropped unread for a while).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import grpc
import zmq

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import (
    DataPlaneError,
    DeadlineExceeded,
    Detached,
    InvalidArgument,
    QuotaExceeded,
    ResourceExhausted,
    error_from_code,
    error_from_envelope,
)
from mabeam.dataplane.message import AgentRef, Destination, Group, Message, tenant_or_default
from mabeam.dataplane.zmqio import SCHED_IDLE, sched_idle_ok, send_frames
from mabeam.v1 import dataplane_pb2 as pb

log = logging.getLogger(__name__)

HEARTBEAT_EVERY = 1.0
#: Pacing by a learnt quota stops this many seconds after meshd's last throttle (see "Throttling").
PACE_FOR = 5.0
#: A paced endpoint may send this many seconds' worth of its quota at once (then it sleeps: fewer wake-ups).
PACE_BURST = 0.02
#: Longest throttle honoured from one ERROR (meshd asks 20 ms, or 1 s when it mutes an endpoint).
_MAX_THROTTLE = 10.0
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
#: Backoff between re-attach attempts: doubling from the first to the last, with jitter.
REATTACH_BACKOFF = (0.05, 2.0)
_FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
_NAME_OPS = frozenset({pb.SYSTEM_OP_REGISTER_NAME, pb.SYSTEM_OP_UNREGISTER_NAME, pb.SYSTEM_OP_JOIN_GROUP,
                       pb.SYSTEM_OP_LEAVE_GROUP})
#: Payloads above this many bytes go on the bulk lane whatever their channel (meshd's default chunk size).
LANE_ABOVE = 1 << 20
LANE_SUFFIX = b"~bulk"  # keep equal to attach_server.LANE_SUFFIX (the client does not import the server)
LANE_ADDRESS_SUFFIX = ".bulk"  # keep equal to attach_server.LANE_ADDRESS_SUFFIX
_ZERO_COPY_ABOVE = 65536
_MAX_BATCH = 256
_MAX_BATCH_BYTES = 256 << 10
_PACK_BELOW = 16 << 10
_STEP = 256  # ZeroMQ messages per receive step before the loop gets a turn
_RETRY_BLOCKED = 0.002
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)


class AttachedEndpoint:
    """One endpoint of an attached process; create it with :meth:`connect`."""

    def __init__(self, address: str, agent_id: str | None = None, tenant: str | None = None,
                 max_pending: int = 1024, max_queued: int = 65536) -> None:
        self.address = address
        self.tenant = tenant_or_default(tenant)
        self.ref = AgentRef(self.tenant, "", agent_id or "")
        self.max_pending = max_pending
        self.max_queued = max_queued
        routing_id = b"at" + os.urandom(8).hex().encode()
        self._ctx = zmq.Context(io_threads=1)
        self._sock = self._socket(self._ctx, routing_id)
        self._lane_ctx = zmq.Context(io_threads=1)
        if sched_idle_ok():
            # The lane's I/O thread writes and reads 64 MiB messages: under SCHED_IDLE it takes a core only
            # when the urgent path's threads do not want it (bench/hol.py through two meshd).
            self._lane_ctx.set(zmq.THREAD_SCHED_POLICY, SCHED_IDLE)
        lane_address = address + LANE_ADDRESS_SUFFIX if address.startswith("ipc://") else address
        self._lane = self._socket(self._lane_ctx, routing_id + LANE_SUFFIX, lane_address)
        self._prefix = wire.batch_prefix("")
        self._ids = itertools.count(random.getrandbits(62) | 1)
        self._templates: dict[tuple[Any, ...], bytes] = {}
        self._waiting: dict[int, asyncio.Future[pb.Envelope | Message]] = {}
        self._mailbox: deque[Message] = deque()
        self._receivers: deque[asyncio.Future[None]] = deque()
        self._out: deque[tuple[bytes, bytes | memoryview]] = deque()
        self._lane_out: deque[list[Any]] = deque()
        self._space: list[asyncio.Future[None]] = []
        self._flush_scheduled = False
        self._blocked = False
        self._loop = asyncio.get_running_loop()
        self._fds = [self._sock.getsockopt(zmq.FD), self._lane.getsockopt(zmq.FD)]
        self._loop.add_reader(self._fds[0], self._on_readable)
        self._loop.add_reader(self._fds[1], self._on_lane_readable)
        self._lane_retry = False
        self._heartbeat = self._loop.call_later(HEARTBEAT_EVERY, self._beat)
        self._beat_bytes = pb.Envelope(version=wire.VERSION, kind=wire.SYSTEM, channel=wire.CONTROL,
                                       system_op=pb.SYSTEM_OP_HEARTBEAT).SerializeToString()
        self._reading = False
        self.bounced = 0
        self.closed = False
        self._closing = False
        self._attached = asyncio.Event()
        self._reattach_task: asyncio.Task[None] | None = None
        #: Names and groups this endpoint holds: registered again after a re-attach.
        self.names: set[str] = set()
        self.groups: set[str] = set()
        #: Called with (name, why) when a name of this endpoint was taken by another owner.
        self.on_name_lost: Callable[[str, str], None] | None = None
        #: Called after a re-attach, once names and groups are registered again.
        self.on_reattached: Callable[[], None] | None = None
        #: Counts of "detached", "reattached", "names_lost" and "throttled" (QUOTA_EXCEEDED throttles heard).
        self.events: Counter[str] = Counter()
        #: Paces casts and calls while meshd throttles this endpoint (None: not throttled lately).
        self.pacer: _Pacer | None = None
        self._pace_from = 0

    def _socket(self, ctx: zmq.Context, routing_id: bytes, address: str | None = None) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.connect(address or self.address)
        return sock

    @classmethod
    async def connect(cls, address: str, agent_id: str | None = None, tenant: str | None = None, *,
                      max_pending: int = 1024, timeout: float = 5.0) -> AttachedEndpoint:
        """Attach to the meshd at ``address`` as ``agent_id`` (generated when None)."""
        endpoint = cls(address, agent_id, tenant, max_pending)
        try:
            result = await endpoint._system(pb.SYSTEM_OP_ATTACH, str(max_pending).encode(), timeout)
        except BaseException:
            await endpoint.close()
            raise
        endpoint.ref = AgentRef.from_proto(result.to_agent)
        endpoint._attached.set()
        return endpoint

    @property
    def attached(self) -> bool:
        """True while meshd knows this endpoint (False while it re-attaches)."""
        return self._attached.is_set()

    def _fail_fast(self) -> None:
        if not self._attached.is_set() and not self.closed:
            raise Detached(f"endpoint {self.ref.agent_id!r} is not attached to meshd right now (re-attaching); "
                           "retry shortly")

    # ------------------------------------------------------------------ sending

    def _queue(self, data: bytes, payload: bytes | memoryview, channel: int, urgent: bool = False) -> None:
        """Queue one serialized envelope; flushed this loop turn, at once when ``urgent`` and idle."""
        if self.closed:
            raise DataPlaneError("endpoint closed")
        if channel == wire.BULK or len(payload) > LANE_ABOVE:
            self._lane_out.append([wire.encode_batch(self._prefix, [data]), payload])
            if not self._lane_retry:
                self._flush_lane()
            return
        out = self._out
        was_empty = not out
        out.append((data, payload))
        if len(out) >= _MAX_BATCH or (urgent and was_empty):
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if self._blocked or self.closed:
            return
        sock = self._sock
        while out:
            envs, payloads, _, packed = wire.take_batch(out, _MAX_BATCH, _MAX_BATCH_BYTES, _PACK_BELOW)
            try:
                send_frames(sock, wire.batch_frames(self._prefix, envs, payloads, packed))
            except zmq.Again:
                out.extendleft(reversed(list(zip(envs, payloads, strict=True))))
                self._blocked = True
                self._loop.call_later(_RETRY_BLOCKED, self._unblock)
                return
        self._wake_senders()
        self._rearm(sock, self._on_readable)

    def _flush_lane(self) -> None:
        self._lane_retry = False
        lane = self._lane
        while self._lane_out and not self.closed:
            try:
                send_frames(lane, self._lane_out[0])
            except zmq.Again:
                if not self._lane_retry:
                    self._lane_retry = True
                    self._loop.call_later(_RETRY_BLOCKED, self._flush_lane)
                return
            self._lane_out.popleft()
        self._wake_senders()
        self._rearm(lane, self._on_lane_readable)

    def _unblock(self) -> None:
        self._blocked = False
        self._flush()

    def _wake_senders(self) -> None:
        if self._space and len(self._out) < self.max_queued and len(self._lane_out) < self.max_queued:
            waiters, self._space = self._space, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _wait_space(self) -> None:
        while len(self._out) >= self.max_queued or len(self._lane_out) >= self.max_queued:
            waiter = self._loop.create_future()
            self._space.append(waiter)
            await waiter
            if self.closed:
                raise DataPlaneError("endpoint closed")

    def _rearm(self, sock: zmq.Socket, reader: Any) -> None:
        """Sending may consume the edge of the socket's FD: read now-waiting messages on the next turn."""
        if not self._reading and sock.getsockopt(_EVENTS) & _POLLIN:
            self._loop.call_soon(reader)

    def _beat(self) -> None:
        if self.closed:
            return
        self._heartbeat = self._loop.call_later(HEARTBEAT_EVERY, self._beat)
        self._queue(self._beat_bytes, b"", wire.CONTROL)

    def _header(self, kind: int, to: Destination, channel: int, flags: int, message_id: int,
                correlation_id: int = 0, deadline_unix_ms: int = 0) -> bytes:
        """A serialized envelope from the flow's cached template (meshd fills in the sender)."""
        key = (kind, to, channel, flags)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= 4096:
                self._templates.clear()
            env = pb.Envelope(version=wire.VERSION, kind=kind, channel=channel, tenant=self.tenant, flags=flags)
            if isinstance(to, str):
                env.to_name = to
            elif isinstance(to, AgentRef):
                env.to_agent.CopyFrom(to.to_proto())
            elif isinstance(to, Group):
                env.to_group.CopyFrom(to.to_proto())
            else:
                raise InvalidArgument(f"bad destination {to!r}")
            template = self._templates[key] = wire.header_template(env)
        return wire.header(template, message_id, time.time_ns(), correlation_id, deadline_unix_ms)

    # ------------------------------------------------------------------ receiving

    def _on_readable(self) -> None:
        """Reader callback of the main connection: up to ``_STEP`` messages, handled synchronously."""
        if self._reading or self.closed:
            return
        self._reading = True
        sock = self._sock
        try:
            if self._blocked and sock.getsockopt(_EVENTS) & _POLLOUT:
                self._blocked = False
                self._flush()
            recv = sock.recv
            for _ in range(_STEP):
                if not sock.getsockopt(_EVENTS) & _POLLIN:
                    return
                # Frame.more instead of recv_multipart's RCVMORE getsockopt per part (as the channels).
                frame = recv(_NOBLOCK, copy=False)
                frames: list[Any] = [frame.bytes]
                while frame.more:
                    frame = recv(_NOBLOCK, copy=False)
                    frames.append(frame.buffer if len(frame) > _ZERO_COPY_ABOVE else frame.bytes)
                self._on_frames(frames)
            self._loop.call_soon(self._on_readable)
        except zmq.Again:
            return
        except zmq.ZMQError:
            if not self.closed:
                raise
        finally:
            self._reading = False

    def _on_lane_readable(self) -> None:
        """Reader callback of the bulk lane: payloads above 64 KiB zero-copy."""
        lane = self._lane
        try:
            while not self.closed and lane.getsockopt(_EVENTS) & _POLLIN:
                parts = lane.recv_multipart(_NOBLOCK, copy=False)
                self._on_frames([p.buffer if i and len(p) > _ZERO_COPY_ABOVE else p.bytes
                                 for i, p in enumerate(parts)])
        except zmq.Again:
            return

    def _on_frames(self, frames: list[Any]) -> None:
        try:
            batch, payloads = wire.decode_frames(frames)
        except wire.FrameError:
            return  # only meshd writes to this socket; nothing to count it against
        for env, payload in zip(batch.envelopes, payloads, strict=True):
            self._on_envelope(env, payload)

    def _on_envelope(self, env: pb.Envelope, payload: bytes) -> None:
        kind = env.kind
        if kind == wire.SYSTEM:
            op = env.system_op
            if op == pb.SYSTEM_OP_DETACHED:
                self._lost_attachment(env.error_message)
                return
            if op == pb.SYSTEM_OP_NAME_LOST:
                self._name_lost(bytes(payload).decode("utf-8", "replace"), env.error_message)
                return
            waiter = self._waiting.pop(env.correlation_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(env)
            return
        if kind == wire.ERROR and env.retry_after_ms and env.error_code == _RESOURCE_EXHAUSTED \
                and not env.sender.node_id:  # meshd's own throttle (forwarded envelopes always carry a sender)
            self._throttled(env)
        if kind == wire.REPLY or kind == wire.ERROR:
            waiter = self._waiting.pop(env.correlation_id, None)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(Message(env, payload))
                return
            if kind == wire.REPLY:
                return  # a late reply: the call already failed with DEADLINE_EXCEEDED
        if len(self._mailbox) >= self.max_pending:
            self.bounced += 1
            if kind == wire.CAST or kind == wire.CALL:
                back = pb.Envelope(version=wire.VERSION, id=next(self._ids), kind=wire.ERROR, channel=env.channel,
                                   correlation_id=env.id, error_code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                                   error_message=f"mailbox of {self.ref.agent_id!r} is full")
                back.to_agent.CopyFrom(env.sender)
                self._queue(back.SerializeToString(), b"", env.channel)
            return
        self._mailbox.append(Message(env, payload))
        receivers = self._receivers
        while receivers:
            receiver = receivers.popleft()
            if not receiver.done():
                receiver.set_result(None)
                break

    def _throttled(self, env: pb.Envelope) -> None:
        """meshd says this endpoint's tenant is over a rate quota: pace casts and calls by it (see "Throttling")."""
        meta = env.error_metadata
        try:
            limit = float(meta.get("limit", "0"))
        except ValueError:
            limit = 0.0
        self.events["throttled"] += 1
        if self.pacer is not None and env.correlation_id and env.correlation_id < self._pace_from:
            return  # about a message sent before this pace was set (it was in flight): the pace stands
        pause = min(_MAX_THROTTLE, env.retry_after_ms / 1000)
        if self.pacer is None:
            self.pacer = _Pacer()
        self.pacer.throttle(meta.get("quota", ""), limit, pause, time.monotonic())
        self._pace_from = next(self._ids)  # ids grow by one per message: later ones were sent at this pace

    def _pace(self, size: int) -> float:
        """Seconds this cast or call must wait for the quota (0: it may go now, and its share was spent)."""
        pacer = self.pacer
        if pacer is None:
            return 0.0
        wait = pacer.spend(size, time.monotonic())
        if wait < 0:  # pacing expired
            self.pacer = None
            return 0.0
        return wait

    async def _paced(self, size: int) -> None:
        """Wait until a cast or call of ``size`` bytes fits the learnt quota (returns at once when not throttled)."""
        while (wait := self._pace(size)) > 0:
            await asyncio.sleep(wait)
            if self.closed:
                raise DataPlaneError("endpoint closed")

    # ------------------------------------------------------------------ healing

    def _lost_attachment(self, why: str) -> None:
        """meshd says this connection is not attached: fail what waits on it, re-attach in the background."""
        if self.closed or self._closing or not self._attached.is_set():
            return  # already re-attaching (a notice for a message sent before the re-attach), or closing
        self._attached.clear()
        self.events["detached"] += 1
        log.warning("endpoint %s was detached by meshd (%s); re-attaching", self.ref.agent_id, why or "no reason")
        error = Detached(f"endpoint {self.ref.agent_id!r} was detached by meshd; re-attaching")
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._reattach_task = self._loop.create_task(self._reattach(), name=f"reattach-{self.ref.agent_id}")

    def _name_lost(self, name: str, why: str) -> None:
        if name not in self.names:
            return
        self.names.discard(name)
        self.events["names_lost"] += 1
        log.warning("endpoint %s lost its name %r: %s", self.ref.agent_id, name, why)
        if self.on_name_lost is not None:
            self.on_name_lost(name, why)

    async def _reattach(self) -> None:
        """Attach again (same agent id and connection) with backoff, then register names and groups again."""
        delay, ceiling = REATTACH_BACKOFF
        while not self.closed:
            try:
                await self._system(pb.SYSTEM_OP_ATTACH, str(self.max_pending).encode(), timeout=2.0, force=True)
                break
            except (DataPlaneError, TimeoutError) as error:
                log.info("re-attach of %s failed (%s); retrying in %.2fs", self.ref.agent_id, error, delay)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(ceiling, delay * 2)
        if self.closed:
            return
        self._attached.set()
        self.events["reattached"] += 1
        for op, held in ((pb.SYSTEM_OP_REGISTER_NAME, self.names), (pb.SYSTEM_OP_JOIN_GROUP, self.groups)):
            for item in sorted(held):
                await self._restore(op, item, held)
        log.info("endpoint %s re-attached with %d names and %d groups", self.ref.agent_id, len(self.names),
                 len(self.groups))
        if self.on_reattached is not None:
            self.on_reattached()

    async def _restore(self, op: int, item: str, held: set[str]) -> None:
        """Register one name (or join one group) again, retrying transient failures while attached."""
        delay, ceiling = REATTACH_BACKOFF
        while item in held and self._attached.is_set() and not self.closed:
            try:
                await self._system(op, item.encode(), timeout=2.0, force=True)
                return
            except DataPlaneError as error:
                if error.code == grpc.StatusCode.ALREADY_EXISTS:
                    self._name_lost(item, error.message)
                    return
                if isinstance(error, Detached):
                    return  # detached again: the next re-attach restores it
                log.info("re-registering %r for %s failed (%s); retrying", item, self.ref.agent_id, error)
            except TimeoutError:
                pass
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(ceiling, delay * 2)

    # ------------------------------------------------------------------ operations

    async def _system(self, op: int, payload: bytes, timeout: float = 5.0, force: bool = False) -> pb.Envelope:
        if not force and op in _NAME_OPS and not self._attached.is_set() and not self.closed:
            try:  # name operations ride out a re-attach (up to their timeout); not wait_for: 3.11's can swallow a cancel
                async with asyncio.timeout(timeout):
                    await self._attached.wait()
            except TimeoutError:
                self._fail_fast()
        env = pb.Envelope(version=wire.VERSION, id=next(self._ids), kind=wire.SYSTEM, channel=wire.CONTROL,
                          system_op=op, tenant=self.tenant)
        env.sender.agent_id = self.ref.agent_id
        future: asyncio.Future[pb.Envelope | Message] = self._loop.create_future()
        self._waiting[env.id] = future
        try:
            self._queue(env.SerializeToString(), payload, wire.CONTROL, urgent=True)
            async with asyncio.timeout(timeout):
                result = await future
        finally:
            self._waiting.pop(env.id, None)
        answer = result.envelope if isinstance(result, Message) else result
        if answer.error_code == _FAILED_PRECONDITION and answer.error_message == "not attached" \
                and op != pb.SYSTEM_OP_ATTACH:
            self._lost_attachment("an operation was refused: not attached")  # (its DETACHED notice follows)
            raise Detached(f"endpoint {self.ref.agent_id!r} is not attached to meshd right now (re-attaching)")
        if answer.error_code:
            raise error_from_code(answer.error_code, answer.error_message)
        if isinstance(result, Message):
            raise DataPlaneError("meshd answered an operation with a message", code=grpc.StatusCode.INTERNAL)
        return result

    def send_nowait(self, to: Destination, payload: bytes, *, channel: int | str | None = None,
                    acknowledged: bool = False) -> int:
        """Queue a cast for meshd; returns its id (ResourceExhausted when ``max_queued`` are waiting).

        While meshd throttles this endpoint's tenant, a cast that does not fit the quota yet raises
        :class:`QuotaExceeded` at once (``retry_after_s``: when it would); :meth:`send` waits instead.
        """
        return self._cast(to, payload, channel, acknowledged, self.pacer is not None)

    def _cast(self, to: Destination, payload: bytes, channel: int | str | None, acknowledged: bool,
              pace: bool) -> int:
        ch = wire.parse_channel(channel)
        self._fail_fast()
        if len(self._out) >= self.max_queued or len(self._lane_out) >= self.max_queued:
            raise ResourceExhausted(f"{self.max_queued} messages are waiting for the connection to meshd")
        if pace and (wait := self._pace(len(payload))) > 0:
            pacer = self.pacer
            raise QuotaExceeded(f"tenant {self.tenant!r} is over its rate quota on meshd (throttled): this cast "
                                f"may go in {wait * 1000:.1f} ms; send() waits instead", self.tenant, pacer.quota,
                                pacer.limit, None, wait)
        message_id = next(self._ids)
        self._queue(self._header(wire.CAST, to, ch, wire.FLAG_ACK if acknowledged else 0, message_id), payload, ch)
        return message_id

    async def send(self, to: Destination, payload: bytes, *, channel: int | str | None = None,
                   acknowledged: bool = False, wait_for_quota: bool = True) -> int:
        """Send a cast through meshd; returns its id (errors arrive later as ERROR messages).

        Waits while ``max_queued`` messages are waiting for the connection to meshd, and while meshd throttles
        this endpoint's tenant (over its rate quota: the cast waits until it fits, see "Throttling"); with
        ``wait_for_quota=False`` such a cast raises :class:`QuotaExceeded` at once instead (a relay serving
        several senders, as agentd's, must not hold the others behind one throttled tenant).
        """
        if len(self._out) >= self.max_queued or len(self._lane_out) >= self.max_queued:
            await self._wait_space()
        if self.pacer is not None and wait_for_quota:
            await self._paced(len(payload))  # spent its share: _cast does not pace it again
            return self._cast(to, payload, channel, acknowledged, False)
        return self._cast(to, payload, channel, acknowledged, self.pacer is not None)

    async def call(self, to: Destination, payload: bytes, *, timeout: float = 5.0,
                   channel: int | str | None = None) -> Message:
        """Call and wait for the reply; raises the typed error (DeadlineExceeded after ``timeout``).

        While meshd throttles this endpoint's tenant (over its rate quota) the call first waits until it fits
        the quota (that wait counts against ``timeout``).
        """
        ch = wire.parse_channel(channel)
        self._fail_fast()
        if self.pacer is not None:
            started = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    await self._paced(len(payload))
            except TimeoutError:
                raise DeadlineExceeded("no turn within the tenant's rate quota before the deadline") from None
            timeout = max(0.001, timeout - (time.monotonic() - started))
        call_id = next(self._ids)
        deadline_ms = int((time.time() + timeout) * 1000)
        data = self._header(wire.CALL, to, ch, 0, call_id, 0, deadline_ms)
        if len(self._out) >= self.max_queued or len(self._lane_out) >= self.max_queued:
            await self._wait_space()
        future: asyncio.Future[pb.Envelope | Message] = self._loop.create_future()
        self._waiting[call_id] = future
        # A timer handle instead of asyncio.timeout: no cancel/uncancel of the task on expiry, less per call.
        timer = self._loop.call_later(timeout, _expire, future)
        try:
            self._queue(data, payload, ch, urgent=True)
            result = await future
        finally:
            timer.cancel()
            self._waiting.pop(call_id, None)
        if not isinstance(result, Message):  # an operation result for this id: meshd refused the call
            raise error_from_code(result.error_code or grpc.StatusCode.UNAVAILABLE.value[0],
                                  result.error_message or "meshd refused the call")
        if result.kind == wire.ERROR:
            raise error_from_envelope(result.envelope)
        return result

    async def reply(self, request: Message, payload: bytes) -> None:
        """Answer a call (ignored for casts)."""
        self.reply_nowait(request, payload)

    def reply_nowait(self, request: Message, payload: bytes) -> None:
        """Answer a call without awaiting (ignored for casts)."""
        if not request.is_call:
            return
        self._fail_fast()
        env = request.envelope
        data = self._header(wire.REPLY, AgentRef.from_proto(env.sender), env.channel, 0, next(self._ids), env.id)
        self._queue(data, payload, env.channel, urgent=True)

    def receive_nowait(self) -> Message | None:
        """The next message, or None when the mailbox is empty."""
        return self._mailbox.popleft() if self._mailbox else None

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message (TimeoutError after ``timeout``)."""
        if self._mailbox:
            return self._mailbox.popleft()
        async with asyncio.timeout(timeout):
            while not self._mailbox:
                if self.closed:
                    raise DataPlaneError("endpoint closed")
                receiver = self._loop.create_future()
                self._receivers.append(receiver)
                try:
                    await receiver
                finally:
                    if not receiver.done():
                        receiver.cancel()
        return self._mailbox.popleft()

    def __aiter__(self) -> AttachedEndpoint:
        return self

    async def __anext__(self) -> Message:
        if self.closed:
            raise StopAsyncIteration
        return await self.receive()

    async def _name_op(self, op: int, item: str, timeout: float = 5.0, attempts: int = 3) -> None:
        """One name or group operation, riding out a detachment and a lost answer.

        Every such operation is idempotent for its endpoint (registering a name it holds, joining a group it
        is in, removing what is gone all succeed), so it is sent again when its answer did not come within
        ``timeout`` (the answer may be lost with a detachment, or this process was paused past the timeout
        while the answer waited unread) and when meshd refused it as "not attached" (the next attempt waits
        for the re-attach); at most ``attempts`` times.
        """
        for attempt in range(1, attempts + 1):
            try:
                await self._system(op, item.encode(), timeout)
                return
            except (Detached, TimeoutError):
                if attempt == attempts or self.closed:
                    raise

    async def _holding(self, op: int, item: str, held: set[str], timeout: float = 5.0) -> None:
        """Register a name or join a group (see :meth:`_name_op`); then hold it across re-attaches."""
        await self._name_op(op, item, timeout)
        held.add(item)

    async def register_name(self, name: str) -> None:
        """Register a cluster-unique name for this endpoint (ALREADY_EXISTS when taken); kept across re-attaches."""
        await self._holding(pb.SYSTEM_OP_REGISTER_NAME, name, self.names)

    async def unregister_name(self, name: str) -> None:
        """Remove a name this endpoint registered (while detached: meshd already dropped it; just forget it)."""
        self.names.discard(name)
        if not self._attached.is_set():
            return
        await self._name_op(pb.SYSTEM_OP_UNREGISTER_NAME, name)

    async def join_group(self, group: str) -> None:
        """Join a group; kept across re-attaches."""
        await self._holding(pb.SYSTEM_OP_JOIN_GROUP, group, self.groups)

    async def leave_group(self, group: str) -> None:
        """Leave a group (while detached: meshd already dropped it; just forget it)."""
        self.groups.discard(group)
        if not self._attached.is_set():
            return
        await self._name_op(pb.SYSTEM_OP_LEAVE_GROUP, group)

    async def close(self) -> None:
        """Detach (names and groups are removed by meshd) and release the sockets and contexts."""
        if self.closed:
            return
        self._closing = True
        if self._reattach_task is not None:
            self._reattach_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reattach_task
        if self._attached.is_set():
            with contextlib.suppress(DataPlaneError, TimeoutError, zmq.ZMQError):
                await self._system(pb.SYSTEM_OP_DETACH, b"", timeout=1.0, force=True)
        self.closed = True
        self._heartbeat.cancel()
        for fd in self._fds:
            self._loop.remove_reader(fd)
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(DataPlaneError("endpoint closed"))
        for wakeup in [*self._space, *self._receivers]:  # they see ``closed`` and raise
            if not wakeup.done():
                wakeup.set_result(None)
        self._sock.close(linger=0)
        self._lane.close(linger=0)
        self._ctx.term()
        self._lane_ctx.term()


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded("no reply before the deadline"))


class _Pacer:
    """This endpoint's mirror of meshd's rate-quota token buckets, learnt from its throttles (pure: time passed in).

    One GCRA schedule per quota (messages, bytes): ``due`` is when the quota has paid for everything sent so
    far; a message goes when ``due`` is at most :data:`PACE_BURST` ahead of now. A throttle restarts the
    schedule ``pause`` seconds (meshd's ``retry_after``) plus one burst from now, so what the endpoint sends
    afterwards never exceeds what meshd's bucket refilled meanwhile. A throttle heard while already pacing at
    that limit means other endpoints of the tenant share the quota on this meshd: the pace halves (down to
    1/64 of the limit) and grows back by 1/8 of the limit per second without a throttle.
    """

    def __init__(self) -> None:
        self.quota = ""
        self.limit = 0.0
        self.rates: dict[str, float] = {}  # quota -> the pace (per second) this endpoint keeps
        self.limits: dict[str, float] = {}  # quota -> meshd's limit
        self.due: dict[str, float] = {}
        self.until = 0.0
        self.grown_at = 0.0

    def throttle(self, quota: str, limit: float, pause: float, now: float) -> None:
        """meshd refused a message over ``quota`` = ``limit`` per second and asked for ``pause`` seconds."""
        if quota not in ("max_messages_per_second", "max_bytes_per_second") or not limit > 0:
            quota, limit = "", 0.0  # a throttle without a (known) limit: just the pause
        self.quota, self.limit = quota, limit
        if quota:
            pace = self.rates.get(quota)
            if pace is not None and self.limits.get(quota) == limit and now < self.until:
                self.rates[quota] = max(limit / 64, pace / 2)
            else:
                self.rates[quota] = limit
            self.limits[quota] = limit
        start = now + pause + PACE_BURST
        for key in self.rates:
            self.due[key] = max(self.due.get(key, 0.0), start)
        self.due[""] = max(self.due.get("", 0.0), now + pause)
        self.until = now + PACE_FOR
        self.grown_at = now

    def spend(self, size: int, now: float) -> float:
        """Seconds to wait before a message of ``size`` bytes (0: go, spent; -1: pacing is over)."""
        if now >= self.until:
            return -1.0
        if now - self.grown_at >= 1.0:
            self.grown_at = now
            for key, pace in self.rates.items():
                self.rates[key] = min(self.limits[key], pace + self.limits[key] / 8)
        wait = self.due.get("", 0.0) - now
        for key in self.rates:
            wait = max(wait, self.due[key] - now - PACE_BURST)
        if wait > 0:
            return max(wait, 0.001)
        for key, pace in self.rates.items():
            cost = 1.0 if key == "max_messages_per_second" else float(size)
            self.due[key] = max(self.due[key], now) + cost / pace
        return 0.0
