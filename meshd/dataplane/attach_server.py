"""meshd's side of local attach: a ROUTER on ``ipc://`` (or loopback TCP) for processes on this host.

An attached process (see :mod:`mabeam.dataplane.attach`) connects a DEALER and
speaks the same batch format as the channels. SYSTEM envelopes carry the
attach operations (ATTACH, DETACH, REGISTER_NAME, UNREGISTER_NAME, JOIN_GROUP,
LEAVE_GROUP, HEARTBEAT); each is answered by a SYSTEM_OP_RESULT envelope whose
``correlation_id`` names the request. Other envelopes are routed by the data
plane with the sender forced to the attached endpoint (no spoofing). Messages
for the endpoint go back over the same connection; ROUTER_MANDATORY turns a
full or vanished connection into RESOURCE_EXHAUSTED / NOT_FOUND for the sender.
An endpoint silent for ``EXPIRE_AFTER`` seconds (clients heartbeat every
second) is detached and its names and groups are removed.

**Healing.** Silence is measured in time meshd itself was running: when meshd
was paused (SIGSTOP, a VM migration, a long GC or swap), its own stall is not
the endpoints' silence, so every endpoint gets a fresh ``EXPIRE_AFTER`` after
it, and the heartbeats that queued meanwhile are read before anyone is
expired. Whatever arrives from a connection that is not attached (detached as
silent, or meshd restarted) is answered with a SYSTEM_OP_DETACHED notice, and
each cast or call in it bounces UNAVAILABLE; the client then re-attaches by
itself and registers its names and groups again. Name operations of one
endpoint run one at a time, so the clean-up of a detached incarnation never
deletes a name its re-attached successor registered. When this node's lease
lapsed and another owner took one of an endpoint's names meanwhile, meshd
sends the endpoint SYSTEM_OP_NAME_LOST (:meth:`AttachServer.name_lost`).

**Rate quotas** (docs/dataplane.md, "Rate quotas throttle the sender"): a cast or call over the sending
tenant's rate quota is dropped (a call refused) and answered with QUOTA_EXCEEDED carrying the limit and a
throttle (``retry_after_ms``, :data:`THROTTLE`), by which the SDK paces itself; an endpoint that keeps
flooding past it is muted (:data:`MUTE_FOR`): its input is dropped before decoding and read at a bounded pace.

**Bulk lane** (bench/hol.py through two meshd): an attached process may connect a second DEALER
whose routing id is its main one + :data:`LANE_SUFFIX`. Messages it sends there count as the
endpoint's own; messages for the endpoint on ``bulk`` or above ``chunk_size`` go back on it (the main
connection when the lane is not connected). A lane carries messages only: an operation sent on it
is refused and counted (``unknown_op``), since its answer could not reach the lane. One ipc connection carrying a 64 MiB message would
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
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import zmq

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import DataPlaneError, NotFound, QuotaExceeded, fill_envelope
from mabeam.dataplane.message import AgentRef, Destination, Message, destination_of, tenant_or_default
from mabeam.errors import FieldViolation
from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane import transport
from meshd.dataplane.metrics import ATTACH_LANE_SOCKET, ATTACH_SOCKET
from meshd.validation import check_agent_id, check_id

if TYPE_CHECKING:
    from meshd.dataplane.plane import DataPlane

log = logging.getLogger(__name__)

EXPIRE_AFTER = 5.0
#: A tick of the expiry loop this much later than planned means meshd itself was not running (paused, starved).
_STALL = 1.5
#: Routing-id suffix of an attached endpoint's bulk lane (see the module docstring).
LANE_SUFFIX = b"~bulk"
#: Suffix of the lanes' ipc address (the attach address + this).
LANE_ADDRESS_SUFFIX = ".bulk"
_ZERO_COPY_ABOVE = 65536
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
#: Envelopes per receive step before the loop gets a turn. Counted in envelopes, not ZeroMQ messages: an
#: endpoint sends up to 256 envelopes per message, so a budget of 256 *messages* let one flooding endpoint
#: hold the loop for 65,536 envelopes (~2 s of refusals under a rate quota, py-spy: 97 % of meshd's loop in
#: this step) while every other endpoint's call and every reply from the peers waited (bench/tenants.py).
#: The ROUTER reads its connections' pipes in turn, so with a small step another endpoint's message is at
#: most one flooder batch away; the flooder's excess stays in its own pipe (backpressure to it alone).
_STEP = 256
#: At most one QUOTA_EXCEEDED error envelope per endpoint in this many seconds for casts over the rate quota
#: (casts are at-most-once: the rest are dropped and counted, ``drops["quota_exceeded_cast"]``). One error
#: per refused cast made a flood cost meshd more than forwarding it. A call still gets its own error.
_CAST_REFUSAL_EVERY = 0.1
#: The throttle meshd asks of an endpoint over its rate quota (``Envelope.retry_after_ms``): send nothing for
#: this long, then at most the quota's rate. The SDK (:class:`mabeam.dataplane.attach.AttachedEndpoint`)
#: paces its casts and calls by it, so a tenant "flooding at full speed" through the SDK runs at its quota
#: and idles instead of burning a core on casts meshd would read, decode and drop (bench/tenants.py).
THROTTLE = 0.02
#: An endpoint that ignores the throttle — more than ``max(MUTE_FLOOR, MUTE_FACTOR x its message rate
#: quota)`` refused casts and calls within one second — is *muted* for :data:`MUTE_FOR` seconds: whatever
#: it sends meanwhile is dropped before its batch is decoded (counted as ``rejected_frames[attach, muted]``),
#: so a raw client flooding past its quota costs meshd a receive per ZeroMQ message, not a decode per cast.
#: Muted again within :data:`MUTE_FORGIVEN_AFTER` seconds of its last mute, the mute doubles (up to
#: :data:`MUTE_MAX`): a client that floods on costs meshd a decode of ``MUTE_FLOOR`` casts per mute, ever rarer.
MUTE_FACTOR = 4
MUTE_FLOOR = 20_000
MUTE_FOR = 1.0
MUTE_MAX = 30.0
MUTE_FORGIVEN_AFTER = 10.0
#: A muted endpoint's ZeroMQ message costs this much of a receive step's budget, and a step that read any
#: pauses the attach socket for :data:`_MUTED_PAUSE` seconds before the next: a muted client flooding at
#: full speed otherwise kept meshd's loop (and its I/O thread) busy reading and dropping, a core between
#: them (bench/tenants.py, raw flood). Paced so, its pipe fills and its sends block (backpressure to it
#: alone); another endpoint's message waits at most one pause (the ROUTER reads connections in turn).
_MUTED_COST = 16
_MUTED_PAUSE = 0.001
_RETRY_BLOCKED = 0.002  # seconds before re-trying an endpoint whose connection was full
#: Longest payload of a name or group operation worth decoding (names are at most 128 characters).
_MAX_NAME_BYTES = 1024
_NAME_OPS = (pb.SYSTEM_OP_REGISTER_NAME, pb.SYSTEM_OP_UNREGISTER_NAME, pb.SYSTEM_OP_JOIN_GROUP,
             pb.SYSTEM_OP_LEAVE_GROUP)


class _AttachedMailbox:
    """The data plane's handle on an attached endpoint: delivering = queueing for the attach socket.

    Messages are queued per endpoint and flushed as one batch per receive step (packed when small),
    like the channels between nodes: forwarding one envelope per ZeroMQ message cost ~18 µs of CPU per
    100 B cast per hop (bench/dataplane.py through two meshd). The queue holds at most ``limit``
    messages (the endpoint's announced mailbox size, capped by ``max_outbound``); beyond it the sender
    gets RESOURCE_EXHAUSTED.
    """

    def __init__(self, server: AttachServer, routing_id: bytes, ref: AgentRef, limit: int) -> None:
        self.server = server
        self.routing_id = routing_id
        self.ref = ref
        self.limit = limit
        self.queue: deque[tuple[bytes, bytes | memoryview]] = deque()
        self.blocked = False
        self.gone = False
        self.names: set[str] = set()
        self.groups: set[str] = set()
        self.refs: dict[tuple[str, str, str], Destination] = {}
        self.last_seen = time.monotonic()
        self.refused_at = 0.0  # when the last QUOTA_EXCEEDED for a refused cast was sent (_CAST_REFUSAL_EVERY)
        self.refused_step = -1  # the attach server's receive step in which a cast was last refused
        self.over_since = 0.0  # start of the second in which ``over`` casts and calls were refused (muting)
        self.over = 0
        self.muted_until = 0.0  # everything it sends before this (monotonic) is dropped undecoded
        self.mute = 0.0  # its last mute's length (doubles while it keeps flooding; MUTE_FORGIVEN_AFTER)

    def offer(self, message: Message) -> bool:
        """Queue one message; False when the queue is full, NotFound when the endpoint is gone."""
        if self.gone:
            raise NotFound(f"endpoint {self.ref.agent_id!r} disconnected")
        payload = message.payload
        server = self.server
        if message.envelope.channel == wire.BULK or len(payload) > server.lane_above:
            return server.send_lane(self, message.envelope.SerializeToString(), payload)
        if len(self.queue) >= self.limit:
            return False
        self.queue.append((message.envelope.SerializeToString(), payload))
        server.mark_dirty(self)
        return True


class AttachServer:
    """Serves attached processes for one :class:`DataPlane`.

    Driven by the socket's FD reader callback (no task wake-up per message, as the channels): each
    step drains ZeroMQ messages with NOBLOCK until ``_STEP`` envelopes were taken, routes their envelopes, and flushes what
    they produced (to peers and to attached endpoints) once at the end of the step.
    """

    def __init__(self, plane: DataPlane, ctx: zmq.Context, lane_ctx: zmq.Context | None = None) -> None:
        self.plane = plane
        self.sock = transport.make_router(ctx, rcvhwm=plane.config.rcvhwm, sndhwm=plane.config.sndhwm,
                                          max_msg=plane.config.max_message_size + (1 << 20), mandatory=True)
        self.lane_above = plane.config.chunk_size
        # Bulk lanes on their own ROUTER (own context, SCHED_IDLE I/O thread; ipc only, at the attach address
        # + LANE_ADDRESS_SUFFIX): one I/O thread reading 64 MiB messages and writing urgent ones put the urgent
        # path behind the bulk bytes for CPU (bench/hol.py through two meshd, multi bulk p99).
        self.lane_sock: zmq.Socket | None = None
        if lane_ctx is not None:
            self.lane_sock = transport.make_router(lane_ctx, rcvhwm=plane.config.rcvhwm, sndhwm=plane.config.sndhwm,
                                                   max_msg=plane.config.max_message_size + (1 << 20),
                                                   mandatory=True)
        self.by_routing_id: dict[bytes, _AttachedMailbox] = {}
        self._prefix = wire.batch_prefix(plane.node_id)
        self._readiness: transport.Readiness | None = None
        self._dirty: set[_AttachedMailbox] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._reading = False
        self._paused = False  # a step read muted input: the next waits _MUTED_PAUSE
        self._muted_seen = False
        self._step = 0  # receive steps so far (_AttachedMailbox.refused_step)
        self._retry_armed = False
        self._counters = plane.counters
        # Bound once: both run per message (bench/dataplane.py through two meshd).
        self._forward = plane.router.forward
        self._router = plane.router
        self._schedule_flush = plane.outbound.schedule
        self._name_locks: dict[tuple[str, str], list[Any]] = {}  # (tenant, agent id) -> [lock, users]
        self.expired = 0
        self.names_lost = 0
        self.muted = 0  # endpoints muted for ignoring their throttle (MUTE_FOR)

    def bind(self, address: str) -> str:
        """Bind the attach socket; returns the concrete address."""
        self.sock.bind(address)
        if self.lane_sock is not None:
            if address.startswith("ipc://"):
                self.lane_sock.bind(address + LANE_ADDRESS_SUFFIX)
            else:  # loopback TCP: lanes share the main socket (the client connects both to one address)
                self.lane_sock.close(linger=0)
                self.lane_sock = None
        return self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def close(self) -> None:
        """Close the socket (the context is terminated by the data plane)."""
        if self._readiness is not None:
            self._readiness.close()
            self._readiness = None
        self.sock.close(linger=0)
        if self.lane_sock is not None:
            self.lane_sock.close(linger=0)

    async def run(self, tg: asyncio.TaskGroup) -> None:
        """Serve the attach socket until cancelled (operations needing the registry run as tasks in ``tg``)."""
        self._tg = tg
        self._loop = asyncio.get_running_loop()
        self._readiness = transport.Readiness(self._on_readable)
        self._readiness.watch(self.sock)
        if self.lane_sock is not None:
            self._readiness.watch(self.lane_sock)
        self._on_readable()
        last_tick = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if now - last_tick > 1.0 + _STALL:
                # meshd was not running (SIGSTOP, swap, starved): that silence is ours, not the endpoints'.
                log.info("attach server resumed after a %.1fs stall; endpoints get a fresh %gs to be heard",
                         now - last_tick, EXPIRE_AFTER)
                for mailbox in self.by_routing_id.values():
                    mailbox.last_seen = max(mailbox.last_seen, now)
            last_tick = now
            self._drain()  # heartbeats already waiting count before anyone is expired (and a missed FD edge)
            self._expire(tg)

    # ------------------------------------------------------------------ receiving

    def _drain(self) -> None:
        """Read everything waiting on the attach socket now (several receive steps if need be)."""
        self._paused = False
        for _ in range(64):
            self._on_readable()
            if not self.sock.getsockopt(_EVENTS) & _POLLIN:
                return

    def _on_readable(self) -> None:
        """Reader callback: one step of up to ``_STEP`` messages; the rest continues next loop turn."""
        if self._reading or self._tg is None:
            return
        if self._paused:  # resumed by its timer; reading EVENTS clears the FD's signal (no busy loop meanwhile)
            with contextlib.suppress(zmq.ZMQError):
                self.sock.getsockopt(_EVENTS)
            return
        self._reading = True
        self._muted_seen = False
        self._step += 1
        outbound = self.plane.outbound
        outbound.hold()
        taken = 0
        try:
            while taken < _STEP:
                frames = self._recv(self.sock)
                if frames is None:
                    break
                taken += self._on_frames(frames, self._tg, ATTACH_SOCKET)
            if self.lane_sock is not None:
                # One lane message per step, after the main socket: urgent messages first.
                frames = self._recv(self.lane_sock)
                if frames is not None:
                    taken = _STEP
                    self._on_frames(frames, self._tg, ATTACH_LANE_SOCKET)
        except Exception:  # a bug must not silence attach: log it and keep serving
            log.exception("attach receive step failed")
        finally:
            self._reading = False
            outbound.release()
        if taken >= _STEP and self._loop is not None:
            if self._muted_seen:
                self._paused = True
                self._loop.call_later(_MUTED_PAUSE, self._resume)
            else:
                self._loop.call_soon(self._on_readable)

    def _resume(self) -> None:
        self._paused = False
        self._on_readable()

    def _recv(self, sock: zmq.Socket) -> list[Any] | None:
        """One multipart message (routing id first), frames above 64 KiB as zero-copy buffers; None when empty."""
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

    def _on_frames(self, frames: list[Any], tg: asyncio.TaskGroup, socket: str) -> int:
        """Handle one multipart message; returns how many envelopes it carried (at least 1: the step's budget)."""
        routing_id = frames[0]
        lane = routing_id.endswith(LANE_SUFFIX)
        mailbox = self.by_routing_id.get(routing_id)
        if mailbox is None and lane:
            mailbox = self.by_routing_id.get(routing_id[:-len(LANE_SUFFIX)])  # the endpoint's bulk lane
        if mailbox is not None:
            now = mailbox.last_seen = time.monotonic()
            if mailbox.muted_until > now:  # it ignored the throttle: not even decoded (MUTE_FOR)
                self._counters.reject(socket, "muted")
                self._muted_seen = True
                return _MUTED_COST
        try:
            batch, payloads = wire.decode_frames(frames[1:])
        except wire.FrameError as exc:
            self._counters.reject(socket, exc.reason)
            return 1
        bounced: list[bytes] = []
        for env, payload in zip(batch.envelopes, payloads, strict=True):
            if env.kind == wire.SYSTEM:
                if lane:  # a lane carries messages only: an operation there (an ATTACH ...) would go unanswered
                    self._counters.reject(socket, "unknown_op")
                    continue
                self._on_system(routing_id, mailbox, env, payload, tg, socket)
                mailbox = self.by_routing_id.get(routing_id)
            elif mailbox is None:
                bounced.append(self._not_attached_error(env))
            else:
                self._on_message(mailbox, env, payload)
        if bounced or (mailbox is None and not lane
                       and any(env.kind == wire.SYSTEM and env.system_op != pb.SYSTEM_OP_ATTACH
                               for env in batch.envelopes)):
            self._tell_detached(routing_id.removesuffix(LANE_SUFFIX), bounced)
        return max(1, len(batch.envelopes))

    @staticmethod
    def _not_attached_error(env: pb.Envelope) -> bytes:
        """The UNAVAILABLE bounce of a cast or call that came from a connection that is not attached."""
        back = pb.Envelope(version=wire.VERSION, kind=wire.ERROR, channel=env.channel or wire.NORMAL,
                           correlation_id=env.id, error_code=grpc.StatusCode.UNAVAILABLE.value[0],
                           error_message="not attached to meshd (detached, or meshd restarted); re-attaching")
        return back.SerializeToString()

    def _tell_detached(self, routing_id: bytes, bounced: list[bytes] | None = None) -> None:
        """SYSTEM_OP_DETACHED to a connection that is not attached (then its bounced casts and calls)."""
        notice = pb.Envelope(version=wire.VERSION, kind=wire.SYSTEM, system_op=pb.SYSTEM_OP_DETACHED,
                             channel=wire.CONTROL, error_code=grpc.StatusCode.UNAVAILABLE.value[0],
                             error_message="not attached to meshd; attach again")
        envs = [notice.SerializeToString(), *(bounced or ())]
        with contextlib.suppress(zmq.ZMQError):  # a vanished or full connection: it learns on its next message
            self._send([routing_id, wire.encode_batch(self._prefix, envs), *([b""] * len(envs))])

    def _on_message(self, mailbox: _AttachedMailbox, env: pb.Envelope, payload: bytes) -> None:
        ref = mailbox.ref
        limiter = self._router.limiter
        if limiter is not None and env.kind == wire.CAST:
            # Over the rate quota: drop the cast here, cheaply (no exception, no error envelope per cast). Refused
            # once in this receive step (a millisecond or so: the bucket refills nothing worth asking for), the
            # endpoint's further casts in the step are dropped without asking the limiter again.
            if mailbox.refused_step == self._step:
                self._counters.drops["quota_exceeded_cast"] += 1
                mailbox.over += 1
                return
            now = time.monotonic()
            refused = limiter.admit(ref.tenant, len(payload), now)
            if refused is not None:
                mailbox.refused_step = self._step
                self._counters.drops["quota_exceeded_cast"] += 1
                if self._over_quota(mailbox, now, refused):
                    return  # muted now: told so
                if now - mailbox.refused_at >= _CAST_REFUSAL_EVERY:
                    mailbox.refused_at = now
                    self._refuse(mailbox, env, self._throttle(mailbox, refused, now, "casts over it are dropped "
                                 f"(at most one such error per {_CAST_REFUSAL_EVERY:g} s)"))
                return
            admitted = True
        elif limiter is not None and env.kind == wire.CALL:
            now = time.monotonic()
            refused = limiter.admit(ref.tenant, len(payload), now)
            if refused is not None:
                if not self._over_quota(mailbox, now, refused):
                    self._refuse(mailbox, env, self._throttle(mailbox, refused, now, "the call was not sent"))
                return
            admitted = True
        else:
            admitted = False
        try:
            if env.WhichOneof("to") == "to_agent":
                # The endpoint's usual peers, without building an AgentRef per message.
                t = env.to_agent
                key = (t.tenant, t.node_id, t.agent_id)
                to: Destination | None = mailbox.refs.get(key)
                if to is None:
                    to = destination_of(env, ref.tenant, NotFound, "the envelope")
                    if len(mailbox.refs) < 1024:
                        mailbox.refs[key] = to
            else:
                to = destination_of(env, ref.tenant, NotFound, "the envelope")
            self._forward(ref, env, payload, to, admitted=admitted)
        except DataPlaneError as exc:
            if env.kind in (wire.CAST, wire.CALL):
                self._refuse(mailbox, env, exc)

    def _throttle(self, mailbox: _AttachedMailbox, refused: tuple[str, float], now: float,
                  what: str) -> QuotaExceeded:
        """The QUOTA_EXCEEDED answering a cast or call over the rate quota: the limit, the use, the throttle."""
        quota, limit = refused
        tenant = mailbox.ref.tenant
        limiter = self._router.limiter
        used = limiter.rates(tenant, now)[0 if quota == "max_messages_per_second" else 1] if limiter else None
        return QuotaExceeded(
            f"tenant {tenant!r} is over its quota {quota} = {limit:g} on node {self.plane.node_id}; {what}; "
            f"send nothing for {THROTTLE * 1000:g} ms, then at most {limit:g} per second",
            tenant, quota, limit, used, THROTTLE)

    def _over_quota(self, mailbox: _AttachedMailbox, now: float, refused: tuple[str, float]) -> bool:
        """Count a refused cast or call; mute the endpoint (True) when it keeps sending far over its quota."""
        if now - mailbox.over_since >= 1.0:
            mailbox.over_since, mailbox.over = now, 0
        mailbox.over += 1
        quotas = getattr(self._router.limiter, "book", None)
        quota = quotas.quotas.get(mailbox.ref.tenant) if quotas is not None else None
        rate = quota.max_messages_per_second if quota is not None else 0
        if mailbox.over <= max(MUTE_FLOOR, MUTE_FACTOR * rate):
            return False
        again = mailbox.mute and now - mailbox.muted_until < MUTE_FORGIVEN_AFTER
        mute = mailbox.mute = min(MUTE_MAX, mailbox.mute * 2) if again else MUTE_FOR
        mailbox.muted_until = now + mute
        mailbox.over_since, mailbox.over = now, 0
        self.muted += 1
        quota_name, limit = refused
        log.warning("attached endpoint %s (tenant %s) ignored its throttle (over %d casts and calls refused in "
                    "a second, quota %s = %g); muted for %gs: what it sends meanwhile is dropped unread",
                    mailbox.ref.agent_id, mailbox.ref.tenant, max(MUTE_FLOOR, MUTE_FACTOR * rate), quota_name,
                    limit, mute)
        error = QuotaExceeded(
            f"endpoint {mailbox.ref.agent_id!r} ignored the throttle of its tenant's quota {quota_name} = "
            f"{limit:g} on node {self.plane.node_id}: muted for {mute:g} s (everything it sends meanwhile "
            "is dropped unread)", mailbox.ref.tenant, quota_name, limit, None, mute)
        error.metadata["muted"] = "true"
        back = pb.Envelope(version=wire.VERSION, kind=wire.ERROR, channel=wire.CONTROL, tenant=mailbox.ref.tenant)
        fill_envelope(back, error)
        back.to_agent.CopyFrom(mailbox.ref.to_proto())
        mailbox.queue.append((back.SerializeToString(), b""))
        self.mark_dirty(mailbox)
        return True

    def _refuse(self, mailbox: _AttachedMailbox, env: pb.Envelope, exc: DataPlaneError) -> None:
        """Queue the ERROR envelope answering the endpoint's cast or call ``env``."""
        ref = mailbox.ref
        back = pb.Envelope(version=wire.VERSION, kind=wire.ERROR, channel=env.channel or wire.NORMAL,
                           tenant=ref.tenant, correlation_id=env.id)
        fill_envelope(back, exc)
        back.to_agent.CopyFrom(ref.to_proto())
        mailbox.queue.append((back.SerializeToString(), b""))  # an error always fits: never lost
        self.mark_dirty(mailbox)

    def _on_system(self, routing_id: bytes, mailbox: _AttachedMailbox | None, env: pb.Envelope, payload: bytes,
                   tg: asyncio.TaskGroup, socket: str) -> None:
        op = env.system_op
        if op == pb.SYSTEM_OP_HEARTBEAT:
            return
        if op == pb.SYSTEM_OP_ATTACH:
            if not self._attach(routing_id, env, payload):
                self._counters.reject(socket, "bad_field")
            return
        if mailbox is None:
            self._result(routing_id, env.id, grpc.StatusCode.FAILED_PRECONDITION, "not attached")
            return
        if op == pb.SYSTEM_OP_DETACH:
            self._detach(mailbox, tg)
            self._result(routing_id, env.id, grpc.StatusCode.OK, "")
        elif op in _NAME_OPS:
            if len(payload) > _MAX_NAME_BYTES:
                self._counters.reject(socket, "bad_field")
                self._result(routing_id, env.id, grpc.StatusCode.INVALID_ARGUMENT,
                             f"a name or group of {len(payload)} bytes; the limit is 128 characters")
                return
            # bytes(): a frame above 64 KiB arrives zero-copy, as a memoryview (tests/fuzz found one crashing here).
            tg.create_task(self._name_op(mailbox, op, bytes(payload).decode("utf-8", "replace"), env.id))
        else:
            self._counters.reject(socket, "unknown_op")
            self._result(routing_id, env.id, grpc.StatusCode.INVALID_ARGUMENT, f"unknown system op {op}")

    def _attach(self, routing_id: bytes, env: pb.Envelope, payload: bytes) -> bool:
        """Attach the connection (answered with a RESULT either way); False when the request was invalid."""
        plane = self.plane
        tenant = tenant_or_default(env.tenant)
        agent_id = env.sender.agent_id or f"att-{routing_id.hex()}"
        violations: list[FieldViolation] = []
        check_id("tenant", tenant, violations)
        check_agent_id("sender.agent_id", agent_id, violations)
        if violations:
            self._result(routing_id, env.id, grpc.StatusCode.INVALID_ARGUMENT,
                         "; ".join(f"{v.field}: {v.description}" for v in violations))
            return False
        key = (tenant, agent_id)
        existing = plane.endpoints.get(key)
        if existing is not None and getattr(existing, "routing_id", None) != routing_id:
            if not (isinstance(existing, _AttachedMailbox) and self._connection_gone(existing)):
                self._result(routing_id, env.id, grpc.StatusCode.ALREADY_EXISTS, f"endpoint {agent_id!r} exists")
                return True
            # Its process is gone (killed, restarted) before meshd expired it: the new one takes the id at once.
            log.info("attached endpoint %s is back on a new connection; dropping the old one", agent_id)
            if self._tg is not None:
                self._detach(existing, self._tg)
            existing = None
        try:
            announced = int(payload or b"0")
        except ValueError:
            announced = 0
        limit = min(plane.config.max_outbound, max(announced, plane.config.default_max_pending))
        bound = plane.mailbox_bound(tenant)  # the tenant's max_mailbox, as for meshd's own endpoints
        if bound:
            limit = min(limit, bound)
        ref = AgentRef(tenant, plane.node_id, agent_id)
        mailbox = _AttachedMailbox(self, routing_id, ref, limit)
        if isinstance(existing, _AttachedMailbox):  # the same connection attaching again: keep what it owns
            mailbox.names, mailbox.groups = existing.names, existing.groups
            existing.gone = True
        self.by_routing_id[routing_id] = mailbox
        plane.endpoints[key] = mailbox
        self._result(routing_id, env.id, grpc.StatusCode.OK, "", ref)
        return True

    def _detach(self, mailbox: _AttachedMailbox, tg: asyncio.TaskGroup) -> None:
        mailbox.gone = True
        mailbox.queue.clear()
        self._dirty.discard(mailbox)
        self.by_routing_id.pop(mailbox.routing_id, None)
        self.plane.close_endpoint(mailbox)
        if mailbox.names or mailbox.groups:
            tg.create_task(self._cleanup(mailbox))

    async def _cleanup(self, mailbox: _AttachedMailbox) -> None:
        registry, ref = self.plane.registry, mailbox.ref
        async with self._one_at_a_time(ref):
            for name in mailbox.names:
                with contextlib.suppress(Exception):
                    await registry.unregister_name(ref.tenant, name, ref)
            for group in mailbox.groups:
                with contextlib.suppress(Exception):
                    await registry.leave_group(ref.tenant, group, ref)

    def _expire(self, tg: asyncio.TaskGroup) -> None:
        horizon = time.monotonic() - EXPIRE_AFTER
        for mailbox in [m for m in self.by_routing_id.values() if m.last_seen < horizon]:
            log.warning("attached endpoint %s was silent for %gs; detaching it (it re-attaches when it is back)",
                        mailbox.ref.agent_id, EXPIRE_AFTER)
            self.expired += 1
            self._detach(mailbox, tg)
            self._tell_detached(mailbox.routing_id)  # if it is alive after all, it re-attaches at once

    def _connection_gone(self, mailbox: _AttachedMailbox) -> bool:
        """True when the endpoint's connection has vanished (ROUTER_MANDATORY: a send to it is unroutable)."""
        notice = pb.Envelope(version=wire.VERSION, kind=wire.SYSTEM, system_op=pb.SYSTEM_OP_HEARTBEAT,
                             channel=wire.CONTROL)
        try:
            self._send([mailbox.routing_id, wire.encode_batch(self._prefix, [notice.SerializeToString()]), b""])
        except zmq.Again:
            return False  # there, just full
        except zmq.ZMQError as exc:
            return exc.errno == errno.EHOSTUNREACH
        return False

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, ref: AgentRef) -> AsyncIterator[None]:
        """Serialize the name operations of one endpoint (across its incarnations), in arrival order."""
        key = (ref.tenant, ref.agent_id)
        entry = self._name_locks.get(key)
        if entry is None:
            entry = self._name_locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._name_locks[key]

    def name_lost(self, tenant: str, name: str, agent_id: str, holder: str) -> bool:
        """Tell the attached endpoint ``agent_id`` that its name was taken by ``holder``; False if none attached."""
        mailbox = self.plane.endpoints.get((tenant_or_default(tenant), agent_id))
        if not isinstance(mailbox, _AttachedMailbox) or mailbox.gone:
            return False
        mailbox.names.discard(name)
        self.names_lost += 1
        notice = pb.Envelope(version=wire.VERSION, kind=wire.SYSTEM, system_op=pb.SYSTEM_OP_NAME_LOST,
                             channel=wire.CONTROL, tenant=mailbox.ref.tenant,
                             error_code=grpc.StatusCode.ALREADY_EXISTS.value[0], error_message=holder)
        with contextlib.suppress(zmq.ZMQError):
            self._send([mailbox.routing_id, wire.encode_batch(self._prefix, [notice.SerializeToString()]),
                        name.encode()])
        return True

    async def _name_op(self, mailbox: _AttachedMailbox, op: int, name: str, request_id: int) -> None:
        async with self._one_at_a_time(mailbox.ref):
            await self._name_op_now(mailbox, op, name, request_id)

    async def _name_op_now(self, mailbox: _AttachedMailbox, op: int, name: str, request_id: int) -> None:
        registry, ref = self.plane.registry, mailbox.ref
        if mailbox.gone:
            self._result(mailbox.routing_id, request_id, grpc.StatusCode.FAILED_PRECONDITION, "not attached")
            return
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
        with contextlib.suppress(zmq.ZMQError):  # a vanished or full requester: it times out on its side
            self._send([routing_id, wire.encode_batch(self._prefix, [env.SerializeToString()]), b""])

    # ------------------------------------------------------------------ sending

    def mark_dirty(self, mailbox: _AttachedMailbox) -> None:
        """A mailbox has queued messages: flush it with the data plane's next flush."""
        self._dirty.add(mailbox)
        self._schedule_flush()

    def flush(self) -> None:
        """Send every dirty mailbox's queue (called from the data plane's flush)."""
        dirty, self._dirty = self._dirty, set()
        for mailbox in dirty:
            self._flush_mailbox(mailbox)
        self._rearm()

    def _flush_mailbox(self, mailbox: _AttachedMailbox) -> None:
        if mailbox.blocked or mailbox.gone:
            return
        cfg = self.plane.config
        queue = mailbox.queue
        while queue:
            envs, payloads, _, packed = wire.take_batch(queue, cfg.max_batch, cfg.max_batch_bytes, cfg.pack_below)
            frames = wire.batch_frames(self._prefix, envs, payloads, packed)
            try:
                self._send([mailbox.routing_id, *frames])
            except zmq.Again:
                # Its connection is full (ROUTER_MANDATORY): keep the queue, retry shortly. ROUTER's POLLOUT
                # says "some peer can take a message", not this one, so a timer re-tries it.
                queue.extendleft(reversed(list(zip(envs, payloads, strict=True))))
                mailbox.blocked = True
                self._arm_retry()
                return
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                self._gone(mailbox, [*zip(envs, payloads, strict=True), *queue])
                return

    def _arm_retry(self) -> None:
        if not self._retry_armed and self._loop is not None:
            self._retry_armed = True
            self._loop.call_later(_RETRY_BLOCKED, self._retry_blocked)

    def _retry_blocked(self) -> None:
        self._retry_armed = False
        for mailbox in list(self.by_routing_id.values()):
            if mailbox.blocked:
                mailbox.blocked = False
                self._flush_mailbox(mailbox)
        self._rearm()

    def _gone(self, mailbox: _AttachedMailbox, undelivered: list[tuple[bytes, Any]]) -> None:
        """The endpoint's connection vanished: detach it; queued casts and calls bounce NOT_FOUND."""
        mailbox.gone = True
        mailbox.queue.clear()
        self.by_routing_id.pop(mailbox.routing_id, None)
        self.plane.close_endpoint(mailbox)
        if self._tg is not None:
            self._detach(mailbox, self._tg)
        error = NotFound(f"endpoint {mailbox.ref.agent_id!r} disconnected")
        for data, _ in undelivered:
            self.plane.router.bounce_serialized(data, error)

    def send_lane(self, mailbox: _AttachedMailbox, env_bytes: bytes, payload: bytes | memoryview) -> bool:
        """Send one large or bulk message on the endpoint's bulk lane (the main connection when it has none).

        False when the connection is full (the sender gets RESOURCE_EXHAUSTED).
        """
        header = wire.encode_batch(self._prefix, [env_bytes])
        try:
            try:
                transport.send_frames(self.lane_sock if self.lane_sock is not None else self.sock,
                                      [mailbox.routing_id + LANE_SUFFIX, header, payload])
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                self._send([mailbox.routing_id, header, payload])
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self._gone(mailbox, [])
            raise NotFound(f"endpoint {mailbox.ref.agent_id!r} disconnected") from None
        self._rearm()
        return True

    def _send(self, frames: list[Any]) -> None:
        transport.send_frames(self.sock, frames)

    def _rearm(self) -> None:
        """Sending may consume the edge of the socket's FD: look again when a message is waiting."""
        if self._loop is not None and not self._reading and any(
                sock.getsockopt(_EVENTS) & _POLLIN for sock in (self.sock, self.lane_sock) if sock is not None):
            self._loop.call_soon(self._on_readable)

    def statistics(self) -> dict[str, Any]:
        """Snapshot: attached endpoints, endpoints detached as silent, names lost, endpoints muted (throttle ignored)."""
        return {"attached": len(self.by_routing_id), "expired": self.expired, "names_lost": self.names_lost,
                "muted": self.muted}
