"""Routing: from a destination to envelopes on the right peer's queue, or to a local endpoint.

:class:`Router` resolves a destination (an agent, a name, a group) to agent
references through the :class:`~meshd.dataplane.registry.RegistryView`,
builds the envelopes, and either delivers them to an endpoint on this node or
queues them on the peer's outbound queue. It answers every undeliverable
CAST or CALL with a typed ERROR back to its sender (``bounce``).

Its public verbs are the data plane's sends: ``cast`` (never waits: raises
QueueFull when a peer's queue is full; :meth:`DataPlane.cast` is the waiting
form), ``call``, ``reply``, and ``forward`` for what attached endpoints send.
Each has a fast path for the common case, one unchunked message to one remote
endpoint, that writes a cached serialized header (``wire.header``) or appends
meshd's authoritative fields to the endpoint's own envelope
(``wire.override_suffix``) instead of building an Envelope per message; the
general path (local targets, groups of several, chunked payloads) builds one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import (
    DataPlaneError,
    InvalidArgument,
    MessageTooLarge,
    NotFound,
    QuotaExceeded,
    ResourceExhausted,
    fill_envelope,
)
from mabeam.dataplane.message import AgentRef, Destination, Group, Message, tenant_or_default
from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane.calls import PendingCalls
from meshd.dataplane.config import DataPlaneConfig
from meshd.dataplane.metrics import PlaneCounters
from meshd.dataplane.outbound import Outbound
from meshd.dataplane.peers import Peer, PeerSet, copy_with_new_id
from meshd.dataplane.registry import RegistryView

if TYPE_CHECKING:
    from mabeam.security.quota import RateLimiter

#: The throttle a QUOTA_EXCEEDED asks of its sender (seconds; ``retry_after``): as the attach server's.
_THROTTLE = 0.02
#: Cached serialized headers / suffixes per flow, at most (cleared when full: flows are few and hot).
_MAX_CACHED_FLOWS = 4096


class Mailbox(Protocol):
    """What a local endpoint is to the router: something that takes a message or says it is full."""

    ref: AgentRef

    def offer(self, message: Message) -> bool:
        """Take one message; False when full (the router bounces RESOURCE_EXHAUSTED)."""
        ...


class Router:
    """Destinations to queues or local mailboxes (see the module docstring)."""

    def __init__(self, node_id: str, config: DataPlaneConfig, registry: RegistryView, peers: PeerSet,
                 outbound: Outbound, calls: PendingCalls, endpoints: dict[tuple[str, str], Mailbox],
                 ids: Iterator[int], counters: PlaneCounters) -> None:
        self.node_id = node_id
        self.config = config
        self.registry = registry
        self.peers = peers
        self.outbound = outbound
        self.calls = calls
        self.endpoints = endpoints
        self.ids = ids
        self.counters = counters
        self._anonymous_ref = AgentRef("default", node_id, "")
        #: Per-tenant message and byte rates on this node (tenant quotas; None: no limits).
        self.limiter: RateLimiter | None = None
        self._rr: dict[tuple[str, str], int] = {}
        self._templates: dict[tuple[object, ...], bytes] = {}
        self._suffixes: dict[tuple[object, ...], bytes] = {}

    def _admit(self, tenant: str, size: int) -> None:
        """Spend the sending tenant's rate quota (QuotaExceeded when over it on this node)."""
        assert self.limiter is not None
        refused = self.limiter.admit(tenant, size, time.monotonic())
        if refused is not None:
            quota, limit = refused
            used = self.limiter.rates(tenant, time.monotonic())[0 if quota == "max_messages_per_second" else 1]
            raise QuotaExceeded(f"tenant {tenant!r} is over its quota {quota} = {limit:g} on node {self.node_id}; "
                                "nothing was sent", tenant, quota, limit, used, _THROTTLE)

    # ----------------------------------------------------------------- the verbs

    def cast(self, sender: AgentRef | None, to: Destination, payload: bytes, *, channel: int | str | None = None,
             acknowledged: bool = False, traceparent: str = "") -> list[int]:
        """Send a one-way message now; returns the id per receiver.

        Raises NotFound (unknown name/group/endpoint on this node), Unavailable
        (destination node unknown or down), MessageTooLarge, QueueFull (a
        ResourceExhausted: the outbound queue to the peer is full). A group in
        mode "all" gets one copy per member; failures of single members are
        counted, not raised, unless all fail.
        """
        src = sender if sender is not None else self._anonymous_ref
        ch = wire.parse_channel(channel)
        self._check_size(len(payload))
        if self.limiter is not None:
            self._admit(src.tenant, len(payload))
        targets = self.resolve(src.tenant, to)
        flags = wire.FLAG_ACK if acknowledged else 0
        ids: list[int] = []
        first_error: DataPlaneError | None = None
        size = len(payload)
        for target in targets:
            try:
                peer = self._remote_peer(target, size)
                if peer is not None:
                    message_id = next(self.ids)
                    data = self._header(src, wire.CAST, ch, target, flags, traceparent, message_id)
                    self.outbound.enqueue_items(peer, self.outbound.wire_channel(ch), [(data, payload)],
                                                message_id if flags else 0)
                else:
                    env = self._envelope(src, wire.CAST, ch, target, flags, traceparent)
                    message_id = env.id
                    self.route(env, payload)
            except DataPlaneError as exc:
                if len(targets) == 1:
                    raise
                first_error = first_error or exc
                self.counters.drops["group_member_failed"] += 1
                continue
            ids.append(message_id)
        if not ids and first_error is not None:
            raise first_error
        return ids

    async def call(self, sender: AgentRef | None, to: Destination, payload: bytes, *, timeout: float | None = None,
                   channel: int | str | None = None, traceparent: str = "") -> Message:
        """Send a call and wait for the reply; raises the typed error of an ERROR reply.

        DeadlineExceeded after ``timeout`` seconds (late replies are dropped),
        Unavailable at once when the destination node goes down or leaves,
        NotFound / ResourceExhausted from the receiving side. A group destination
        must use mode "one".
        """
        src = sender if sender is not None else self._anonymous_ref
        ch = wire.parse_channel(channel)
        if isinstance(to, Group) and to.mode != "one":
            raise InvalidArgument("a call to a group needs mode 'one'")
        self._check_size(len(payload))
        if self.limiter is not None:
            self._admit(src.tenant, len(payload))
        timeout = timeout or self.config.default_call_timeout
        target = self.resolve(src.tenant, to)[0]
        deadline_ms = int(time.time() * 1000 + timeout * 1000)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        peer = self._remote_peer(target, len(payload))
        if peer is not None:
            call_id = next(self.ids)
            pending = self.calls.register(call_id, future, src, target.node_id, timeout)
            data = self._header(src, wire.CALL, ch, target, 0, traceparent, call_id, 0, deadline_ms)
            try:
                self.outbound.enqueue_items(peer, self.outbound.wire_channel(ch), [(data, payload)], 0, urgent=True)
            except DataPlaneError:
                self.calls.forget(pending)
                raise
        else:
            env = self._envelope(src, wire.CALL, ch, target, 0, traceparent)
            env.deadline_unix_ms = deadline_ms
            pending = self.calls.register(env.id, future, src, target.node_id, timeout)
            try:
                self.route(env, payload)
            except DataPlaneError:
                self.calls.forget(pending)
                raise
        try:
            return await future
        finally:
            self.calls.forget(pending)

    def reply(self, sender: AgentRef | None, caller: AgentRef, call_id: int, payload: bytes, *,
              channel: int | str | None = None) -> int:
        """Send the REPLY to call ``call_id`` made by ``caller``; returns the reply's id."""
        src = sender if sender is not None else self._anonymous_ref
        self._check_size(len(payload))
        target = AgentRef(tenant_or_default(caller.tenant), caller.node_id or self.node_id, caller.agent_id)
        ch = wire.parse_channel(channel)
        peer = self._remote_peer(target, len(payload))
        if peer is not None:
            reply_id = next(self.ids)
            data = self._header(src, wire.REPLY, ch, target, 0, "", reply_id, call_id)
            self.outbound.enqueue_items(peer, self.outbound.wire_channel(ch), [(data, payload)], 0)
            return reply_id
        env = self._envelope(src, wire.REPLY, ch, target)
        env.correlation_id = call_id
        self.route(env, payload)
        return env.id

    def forward(self, sender: AgentRef, env: pb.Envelope, payload: bytes, to: Destination,
                admitted: bool = False) -> None:
        """Route what an attached endpoint sent (``env`` as it came) with ``sender`` authoritative.

        A CALL is registered so the reply (or an ERROR) comes back to ``sender``. The fast path,
        one unchunked message to one remote endpoint, forwards the endpoint's envelope bytes as
        they came with meshd's authoritative fields appended (``wire.override_suffix``: sender,
        tenant, version, channel, flags, resolved destination). Protobuf keeps the last value of a
        repeated scalar field and switches a oneof to the last member seen, so the receiver reads
        meshd's values whatever the endpoint wrote: no spoofing, no re-encoding (bench/dataplane.py
        through two meshd: building and serializing a new envelope per message was most of
        meshd-1's time). Other cases rewrite the envelope and take the general path.
        """
        size = len(payload)
        self._check_size(size)
        if self.limiter is not None and env.kind != wire.REPLY and not admitted:  # admitted: the caller spent it
            self._admit(sender.tenant, size)
        targets = self.resolve(sender.tenant, to)
        if len(targets) == 1 and self._forward_fast(sender, env, payload, targets[0]):
            return
        env.tenant = sender.tenant
        env.sender.CopyFrom(sender.to_proto())
        env.version = wire.VERSION
        env.flags &= wire.FLAG_ACK
        if not env.channel:
            env.channel = wire.NORMAL
        timeout = self.config.default_call_timeout
        if env.kind == wire.CALL and env.deadline_unix_ms:
            timeout = max(0.001, env.deadline_unix_ms / 1000 - time.time())
        for index, target in enumerate(targets):
            copy = env if index == 0 else copy_with_new_id(env, next(self.ids))
            copy.to_agent.CopyFrom(target.to_proto())
            if copy.kind == wire.CALL:
                pending = self.calls.register(copy.id, None, sender, target.node_id, timeout)
                try:
                    self.route(copy, payload)
                except DataPlaneError:
                    self.calls.forget(pending)
                    raise
            else:
                self.route(copy, payload)

    def _forward_fast(self, sender: AgentRef, env: pb.Envelope, payload: bytes, target: AgentRef) -> bool:
        """The fast path of :meth:`forward`; False (nothing sent) when the target is local or needs chunks."""
        peer = self._remote_peer(target, len(payload))
        if peer is None:
            return False
        ch = env.channel or wire.NORMAL
        flags = env.flags & wire.FLAG_ACK
        key = (sender, target, ch, flags)
        suffix = self._suffixes.get(key)
        if suffix is None:
            if len(self._suffixes) >= _MAX_CACHED_FLOWS:
                self._suffixes.clear()
            suffix = self._suffixes[key] = wire.override_suffix(sender, target, ch, flags)
        data = env.SerializeToString() + suffix
        pending = None
        if env.kind == wire.CALL:
            timeout = self.config.default_call_timeout
            deadline = env.deadline_unix_ms
            if deadline:
                timeout = max(0.001, deadline / 1000 - time.time())
            pending = self.calls.register(env.id, None, sender, target.node_id, timeout)
        try:
            self.outbound.enqueue_items(peer, self.outbound.wire_channel(ch), [(data, payload)],
                                        env.id if flags else 0, urgent=env.kind != wire.CAST)
        except DataPlaneError:
            if pending is not None:
                self.calls.forget(pending)
            raise
        return True

    # ----------------------------------------------------------------- resolution and envelopes

    def resolve(self, tenant: str, to: Destination) -> list[AgentRef]:
        """The agents ``to`` names in ``tenant`` (a round-robin group advances once per call)."""
        if isinstance(to, AgentRef):
            if to.tenant == tenant and to.node_id:
                return [to]
            if tenant_or_default(to.tenant) != tenant:
                raise NotFound(f"agent {to.agent_id!r} not found in tenant {tenant!r}")
            return [AgentRef(tenant, to.node_id or self.node_id, to.agent_id)]
        if isinstance(to, Group):
            members = sorted(self.registry.group_members(tenant, to.name), key=lambda r: (r.node_id, r.agent_id))
            if not members:
                raise NotFound(f"group {to.name!r} has no members in tenant {tenant!r}")
            if to.mode == "one":
                index = self._rr.get((tenant, to.name), 0)
                self._rr[(tenant, to.name)] = index + 1
                return [members[index % len(members)]]
            return members
        if isinstance(to, str):
            ref = self.registry.lookup(tenant, to)
            if ref is None:
                raise NotFound(f"name {to!r} is not registered in tenant {tenant!r}")
            return [ref]
        raise InvalidArgument(f"bad destination {to!r}")

    def _check_size(self, size: int) -> None:
        if size > self.config.max_message_size:
            raise MessageTooLarge(f"{size} bytes is above the maximum {self.config.max_message_size}")

    def _envelope(self, sender: AgentRef, kind: int, channel: int, target: AgentRef,
                  flags: int = 0, traceparent: str = "") -> pb.Envelope:
        env = pb.Envelope(version=wire.VERSION, id=next(self.ids), kind=kind, channel=channel,
                          tenant=sender.tenant, flags=flags, traceparent=traceparent,
                          sent_unix_ns=time.time_ns())
        s = env.sender
        s.tenant, s.node_id, s.agent_id = sender.tenant, sender.node_id, sender.agent_id
        t = env.to_agent
        t.tenant, t.node_id, t.agent_id = target.tenant, target.node_id, target.agent_id
        return env

    def _remote_peer(self, target: AgentRef, size: int) -> Peer | None:
        """The peer for the header-template fast path: a remote target and an unchunked payload; else None."""
        node = target.node_id
        if node == self.node_id or not node or size > self.config.chunk_size:
            return None
        return self.peers.require(node)

    def _header(self, sender: AgentRef, kind: int, channel: int, target: AgentRef, flags: int, traceparent: str,
                message_id: int, correlation_id: int = 0, deadline_unix_ms: int = 0, sent_unix_ns: int = 0
                ) -> bytes:
        """Serialized envelope from a cached template per flow (see ``envelope.header``); sent now unless given."""
        key = (sender, target, kind, channel, flags, traceparent)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= _MAX_CACHED_FLOWS:
                self._templates.clear()
            env = pb.Envelope(version=wire.VERSION, kind=kind, channel=channel, tenant=sender.tenant, flags=flags,
                              traceparent=traceparent)
            s = env.sender
            s.tenant, s.node_id, s.agent_id = sender.tenant, sender.node_id, sender.agent_id
            t = env.to_agent
            t.tenant, t.node_id, t.agent_id = target.tenant, target.node_id, target.agent_id
            template = self._templates[key] = wire.header_template(env)
        return wire.header(template, message_id, sent_unix_ns or time.time_ns(), correlation_id, deadline_unix_ms)

    # ----------------------------------------------------------------- routing and local delivery

    def route(self, env: pb.Envelope, payload: bytes | memoryview) -> None:
        """Deliver ``env`` here when it is for this node, else queue it for its node's peer."""
        node = env.to_agent.node_id
        if not node or node == self.node_id:
            env.to_agent.node_id = self.node_id
            self.deliver(env, bytes(payload) if isinstance(payload, memoryview) else payload)
            return
        self.outbound.enqueue(self.peers.require(node), env, payload)

    def deliver(self, env: pb.Envelope, payload: bytes) -> None:
        """Deliver to a local endpoint or a waiting call; bounce NOT_FOUND / RESOURCE_EXHAUSTED."""
        kind = env.kind
        if kind == wire.REPLY or kind == wire.ERROR:
            outcome = self.calls.answer(env, payload)
            if outcome == "done":
                return
            if outcome == "late":
                self.counters.drops["late_reply"] += 1
                return
        elif kind == wire.CALL and env.deadline_unix_ms and time.time() * 1000 > env.deadline_unix_ms:
            self.counters.drops["expired_call"] += 1
            return
        target = env.to_agent
        tenant = target.tenant or "default"
        endpoint = self.endpoints.get((tenant, target.agent_id))
        if endpoint is None or tenant != (env.tenant or "default"):
            self.bounce(env, NotFound(f"no endpoint {target.agent_id!r} on node {self.node_id}"))
            return
        try:
            accepted = endpoint.offer(Message(env, payload))
        except DataPlaneError as exc:
            self.bounce(env, exc)
            return
        if not accepted:
            self.bounce(env, ResourceExhausted(f"mailbox of {target.agent_id!r} is full"))

    def bounce(self, env: pb.Envelope, error: DataPlaneError) -> None:
        """Send a typed ERROR back to the sender of a CAST or CALL (others are dropped and counted)."""
        self.counters.drops[error.code.name.lower()] += 1
        if env.kind not in (wire.CAST, wire.CALL) or not env.sender.agent_id and env.kind == wire.CAST:
            return
        back = pb.Envelope(version=wire.VERSION, id=next(self.ids), kind=wire.ERROR, channel=env.channel,
                           tenant=env.tenant, correlation_id=env.id, sent_unix_ns=time.time_ns())
        fill_envelope(back, error)
        back.sender.CopyFrom(env.to_agent)
        back.to_agent.CopyFrom(env.sender)
        try:
            self.route(back, b"")
        except DataPlaneError:
            self.counters.drops["bounce_failed"] += 1

    def bounce_serialized(self, data: bytes, error: DataPlaneError) -> None:
        """Bounce a queued, already-serialized envelope that could not be delivered (see :meth:`bounce`)."""
        try:
            env = pb.Envelope.FromString(data)
        except Exception:  # our own serialization: cannot fail short of a bug; never crash a flush for it
            self.counters.drops["bounce_failed"] += 1
            return
        if env.kind == wire.REPLY or env.kind == wire.ERROR:
            self.counters.drops[error.code.name.lower()] += 1
            return
        self.bounce(env, error)
