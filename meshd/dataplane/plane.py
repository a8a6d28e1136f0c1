"""The data plane of one meshd: four priority channels to every peer, local endpoints, calls.

:class:`DataPlane` owns the sockets and the routing policy; the pure pieces it
uses (validation, fairness, chunking, dedup, failure detection) live in their
own modules. meshd drives it from outside:

* ``await start()`` binds the channels (``addresses``) and the attach socket;
* the membership watch calls ``peer_up`` / ``peer_down``;
* local users open endpoints (``open_endpoint``) or attach over ipc
  (:mod:`mabeam.dataplane.attach`), and the gRPC face calls ``send``/``call``.

Outbound envelopes are coalesced per (peer, channel) and flushed when the
event loop goes idle (``call_soon``) or a batch is full; inbound sockets are
drained with NOBLOCK by one task that follows :class:`FairScheduler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import zmq

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import (
    DataPlaneError,
    DeadlineExceeded,
    InvalidArgument,
    MessageTooLarge,
    NotFound,
    ResourceExhausted,
    Unavailable,
    error_from_code,
)
from mabeam.dataplane.message import AgentRef, Destination, Group, Message, tenant_or_default
from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane import transport
from meshd.dataplane.attach_server import AttachServer
from meshd.dataplane.chunking import Reassembler, split_payload
from meshd.dataplane.config import DataPlaneConfig
from meshd.dataplane.dedup import DedupWindow
from meshd.dataplane.endpoint import LocalEndpoint
from meshd.dataplane.failure import FailureDetector, PeerState
from meshd.dataplane.metrics import ChannelMetrics
from meshd.dataplane.metrics import publish_all as publish_metrics
from meshd.dataplane.peers import Peer, PendingCall, QueueFull, copy_with_new_id
from meshd.dataplane.receiving import ReceiveSide
from meshd.dataplane.registry import InMemoryRegistry, RegistryView
from meshd.dataplane.scheduler import FairScheduler

log = logging.getLogger(__name__)

class DataPlane(ReceiveSide):
    """One node's data plane. See the module docstring and docs/dataplane.md for the contract."""

    def __init__(self, node_id: str, config: DataPlaneConfig | None = None, registry: RegistryView | None = None,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.config = config or DataPlaneConfig()
        self.registry: RegistryView = registry if registry is not None else InMemoryRegistry()
        self.clock = clock
        self.addresses: dict[str, str] = {}
        self.attach_address = ""
        self.curve_public_key: str | None = None
        self._curve_secret: bytes | None = None
        self._peers: dict[str, Peer] = {}
        self._allowed_keys: set[str] = set()
        self._keys_changed = asyncio.Event()
        #: CURVE handshakes held right now, waiting for membership to announce the client's key.
        self.curve_handshakes_held = 0
        self.endpoints: dict[tuple[str, str], Any] = {}
        self._calls: dict[int, PendingCall] = {}
        self._ids = itertools.count(random.getrandbits(62) | 1)
        self._prefix = wire.batch_prefix(node_id)
        self._anonymous_ref = AgentRef("default", node_id, "")
        self._templates: dict[tuple[Any, ...], bytes] = {}
        self._suffixes: dict[tuple[Any, ...], bytes] = {}
        self._chunk_channel = wire.NORMAL if self.config.single_channel else wire.BULK
        self._scheduler = FairScheduler(dict(zip(wire.CHANNELS, self.config.quanta, strict=True)))
        self._reassembler = Reassembler(self.config.max_message_size, self.config.max_reassembly_bytes,
                                        self.config.reassembly_timeout, self.config.reassembly_pool_bytes)
        self._dedup = DedupWindow(self.config.dedup_window)
        self._detector = FailureDetector(self.config.suspect_after, self.config.down_after)
        self._metrics = {ch: ChannelMetrics(wire.channel_name(ch)) for ch in wire.CHANNELS}
        self._rr: dict[tuple[str, str], int] = {}
        self._dirty: set[tuple[Peer, int]] = set()
        self._flush_scheduled = False
        self.rejected: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.received = 0
        self.sent = 0
        self._routers: dict[int, zmq.Socket] = {}
        self._contexts: transport.ContextSet | None = None
        self._readiness: transport.Readiness | None = None
        self._router_list: list[tuple[int, zmq.Socket]] = []
        self._pumping = False
        self._runner: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tmpdir: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heartbeat = pb.Envelope(version=wire.VERSION, kind=wire.SYSTEM, channel=wire.CONTROL,
                                      system_op=pb.SYSTEM_OP_HEARTBEAT).SerializeToString()
        self.attach: AttachServer | None = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the four channels and the attach socket, and start the receive and timer tasks."""
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        idle = (wire.BULK,) if cfg.bulk_sched_idle and not cfg.single_channel and transport.sched_idle_ok() else ()
        self._contexts = transport.ContextSet(wire.CHANNELS, cfg.context_per_channel, idle)
        curve_keys: tuple[bytes, bytes] | None = None
        if cfg.curve:
            if cfg.curve_public_key and cfg.curve_secret_key:
                public, secret = cfg.curve_public_key.encode(), cfg.curve_secret_key.encode()
            else:
                public, secret = zmq.curve_keypair()
            self.curve_public_key = public.decode()
            self._curve_secret = secret
            self._allowed_keys.add(self.curve_public_key)
            curve_keys = (public, secret)
            self._contexts.enable_curve_auth(self._key_allowed)
        max_msg = cfg.chunk_size + (1 << 20)
        for offset, ch in enumerate(wire.CHANNELS):
            sock = transport.make_router(self._contexts.by_channel[ch], rcvhwm=cfg.rcvhwm, sndhwm=cfg.sndhwm,
                                         max_msg=max_msg, curve_keys=curve_keys)
            port = cfg.base_port + offset if cfg.base_port else 0
            self.addresses[wire.channel_name(ch)] = transport.bind_router(sock, cfg.bind_host, port)
            self._routers[ch] = sock
        self._router_list = list(self._routers.items())
        self._readiness = transport.Readiness(self._on_channel_readable)
        for ch, sock in self._routers.items():
            self._readiness.watch(sock, ch)
        self.attach = AttachServer(self, self._contexts.attach, self._contexts.attach_lane)
        self.attach_address = self.attach.bind(self._attach_endpoint())
        self._runner = asyncio.create_task(self._run(), name=f"dataplane-{self.node_id}")

    def _attach_endpoint(self) -> str:
        cfg = self.config
        if cfg.attach_address:
            return cfg.attach_address
        if cfg.attach_tcp or not hasattr(zmq, "IPC_PATH_MAX_LEN") or not zmq.has("ipc"):
            return f"tcp://{cfg.bind_host}:0"
        self._tmpdir = tempfile.mkdtemp(prefix="mabeam-dp-")
        return f"ipc://{os.path.join(self._tmpdir, 'attach.sock')}"

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._timer_loop())
            assert self.attach is not None
            tg.create_task(self.attach.run(tg))

    async def stop(self) -> None:
        """Fail pending calls (UNAVAILABLE), close every socket and terminate the contexts."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        for pending in list(self._calls.values()):
            self._fail_call(pending, Unavailable("data plane stopped"))
        for peer in list(self._peers.values()):
            self._close_peer(peer)
        self._peers.clear()
        for ep in list(self.endpoints.values()):
            if isinstance(ep, LocalEndpoint):
                ep.close()
        if self._readiness is not None:
            self._readiness.close()
        self._router_list = []  # a pump continuation still queued after stop finds nothing to read
        for sock in self._routers.values():
            sock.close(linger=0)
        self._routers.clear()
        if self.attach is not None:
            self.attach.close()
        if self._contexts is not None:
            self._contexts.terminate()
            self._contexts = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    # ----------------------------------------------------------------- membership

    def peer_up(self, node_id: str, data_addresses: Mapping[str, str], curve_public_key: str | None = None) -> None:
        """Open (or re-open on changed addresses) the four channel connections to a peer."""
        if node_id == self.node_id or self._contexts is None:
            return
        existing = self._peers.get(node_id)
        if existing is not None:
            if existing.addresses == dict(data_addresses) and existing.curve_key == (curve_public_key or None):
                return
            self._close_peer(existing)
        peer = Peer(node_id, data_addresses, curve_public_key)
        if self.config.curve and not curve_public_key:
            log.warning("peer %s has no CURVE key; not connecting", node_id)
            return
        curve = None
        if self.config.curve:
            assert self.curve_public_key is not None and self._curve_secret is not None
            self._allow_key(curve_public_key or "")
            curve = ((curve_public_key or "").encode(), self.curve_public_key.encode(), self._curve_secret)
        for ch in wire.CHANNELS:
            address = data_addresses.get(wire.channel_name(ch))
            if not address:
                raise InvalidArgument(f"peer {node_id} has no {wire.channel_name(ch)} address")
            peer.sockets[ch] = transport.make_dealer(self._contexts.by_channel[ch], self.node_id.encode(), address,
                                                     sndhwm=self.config.sndhwm, curve=curve)
        self._peers[node_id] = peer
        self._detector.add(node_id, self.clock())

    def peer_down(self, node_id: str) -> None:
        """The peer left (membership): fail its pending calls with UNAVAILABLE now and close its sockets."""
        peer = self._peers.pop(node_id, None)
        self._detector.remove(node_id)
        self._fail_node(node_id, f"node {node_id} left the cluster")
        if peer is not None:
            if peer.curve_key:
                self._allowed_keys.discard(peer.curve_key)
            self.drops["peer_left_unacked"] += len(peer.unacked)
            self._close_peer(peer)

    def peer_state(self, node_id: str) -> PeerState | None:
        """What the failure detector thinks of a peer (None when not a peer)."""
        return self._detector.state(node_id)

    def _close_peer(self, peer: Peer) -> None:
        for sock in peer.sockets.values():
            sock.close(linger=0)
        peer.sockets.clear()
        for ch in wire.CHANNELS:
            self._dirty.discard((peer, ch))
            peer.queues[ch].clear()
        peer.space.set()

    async def _key_allowed(self, key: str) -> bool:
        # A peer often learns our NodeInfo (and dials us) a few milliseconds before our own membership
        # watch announces its key. libzmq never retries a handshake that was denied, so denying it here
        # would silence that peer for good (found on the multi-host test bed): hold the handshake until
        # the key is announced, for at most curve_key_wait seconds, and deny only keys that stay unknown.
        if key in self._allowed_keys:
            return True
        deadline = self.clock() + self.config.curve_key_wait
        self.curve_handshakes_held += 1
        try:
            while key not in self._allowed_keys:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    self.rejected["curve_denied"] += 1
                    return False
                changed = self._keys_changed
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    pass
            return True
        finally:
            self.curve_handshakes_held -= 1

    def _allow_key(self, key: str) -> None:
        self._allowed_keys.add(key)
        self._keys_changed.set()
        self._keys_changed = asyncio.Event()

    def _fail_node(self, node_id: str, why: str) -> None:
        for pending in [p for p in self._calls.values() if p.node_id == node_id]:
            self._calls.pop(pending.id, None)
            self._fail_call(pending, Unavailable(why))
        self._reassembler.drop_where(lambda key: key[0] == node_id)

    # ----------------------------------------------------------------- endpoints

    def open_endpoint(self, agent_id: str | None = None, tenant: str | None = None, *,
                      max_pending: int | None = None, handler: Callable[[Message], Any] | None = None
                      ) -> LocalEndpoint:
        """Open an in-process endpoint (mailbox, or ``handler`` called per message) on this node."""
        ref = AgentRef(tenant_or_default(tenant), self.node_id, agent_id or f"ep-{next(self._ids):x}")
        key = (ref.tenant, ref.agent_id)
        if key in self.endpoints:
            raise DataPlaneError(f"endpoint {ref.agent_id!r} exists", code=grpc.StatusCode.ALREADY_EXISTS)
        ep = LocalEndpoint(self, ref, max_pending or self.config.default_max_pending, handler)
        self.endpoints[key] = ep
        return ep

    def close_endpoint(self, endpoint: Any) -> None:
        """Forget an endpoint (called by its ``close``)."""
        key = (endpoint.ref.tenant, endpoint.ref.agent_id)
        if self.endpoints.get(key) is endpoint:
            del self.endpoints[key]

    # ----------------------------------------------------------------- sending

    def _resolve(self, tenant: str, to: Destination) -> list[AgentRef]:
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

    def _envelope(self, sender: AgentRef, kind: int, channel: int, target: AgentRef,
                  flags: int = 0, traceparent: str = "") -> pb.Envelope:
        env = pb.Envelope(version=wire.VERSION, id=next(self._ids), kind=kind, channel=channel,
                          tenant=sender.tenant, flags=flags, traceparent=traceparent,
                          sent_unix_ns=time.time_ns())
        s = env.sender
        s.tenant, s.node_id, s.agent_id = sender.tenant, sender.node_id, sender.agent_id
        t = env.to_agent
        t.tenant, t.node_id, t.agent_id = target.tenant, target.node_id, target.agent_id
        return env

    def _anonymous(self, sender: AgentRef | None) -> AgentRef:
        return sender if sender is not None else self._anonymous_ref

    def _remote_peer(self, target: AgentRef, size: int) -> Peer | None:
        """The peer for the header-template fast path: a remote target and an unchunked payload; else None."""
        node = target.node_id
        if node == self.node_id or not node or size > self.config.chunk_size:
            return None
        peer = self._peers.get(node)
        if peer is None:
            raise Unavailable(f"node {node!r} is not a member")
        if peer.down:
            raise Unavailable(f"node {node!r} is not responding")
        return peer

    def _header(self, sender: AgentRef, kind: int, channel: int, target: AgentRef, flags: int, traceparent: str,
                message_id: int, correlation_id: int = 0, deadline_unix_ms: int = 0, sent_unix_ns: int = 0
                ) -> bytes:
        """Serialized envelope from a cached template per flow (see ``envelope.header``); sent now unless given."""
        key = (sender, target, kind, channel, flags, traceparent)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= 4096:
                self._templates.clear()
            env = pb.Envelope(version=wire.VERSION, kind=kind, channel=channel, tenant=sender.tenant, flags=flags,
                              traceparent=traceparent)
            s = env.sender
            s.tenant, s.node_id, s.agent_id = sender.tenant, sender.node_id, sender.agent_id
            t = env.to_agent
            t.tenant, t.node_id, t.agent_id = target.tenant, target.node_id, target.agent_id
            template = self._templates[key] = wire.header_template(env)
        return wire.header(template, message_id, sent_unix_ns or time.time_ns(), correlation_id, deadline_unix_ms)

    def send_nowait(self, sender: AgentRef | None, to: Destination, payload: bytes, *,
                    channel: int | str | None = None, acknowledged: bool = False, traceparent: str = ""
                    ) -> list[int]:
        """Send a one-way message now; returns the id per receiver.

        Raises NotFound (unknown name/group/endpoint on this node), Unavailable
        (destination node unknown or down), MessageTooLarge, ResourceExhausted
        (outbound queue to the peer full). A group in mode "all" gets one copy per
        member; failures of single members are counted, not raised, unless all fail.
        """
        src = self._anonymous(sender)
        ch = wire.parse_channel(channel)
        if len(payload) > self.config.max_message_size:
            raise MessageTooLarge(f"{len(payload)} bytes is above the maximum {self.config.max_message_size}")
        targets = self._resolve(src.tenant, to)
        flags = wire.FLAG_ACK if acknowledged else 0
        ids: list[int] = []
        first_error: DataPlaneError | None = None
        size = len(payload)
        for target in targets:
            try:
                peer = self._remote_peer(target, size)
                if peer is not None:
                    message_id = next(self._ids)
                    data = self._header(src, wire.CAST, ch, target, flags, traceparent, message_id)
                    self._enqueue_items(peer, self._wire_channel(ch), [(data, payload)], message_id if flags else 0)
                else:
                    env = self._envelope(src, wire.CAST, ch, target, flags, traceparent)
                    message_id = env.id
                    self._route(env, payload)
            except DataPlaneError as exc:
                if len(targets) == 1:
                    raise
                first_error = first_error or exc
                self.drops["group_member_failed"] += 1
                continue
            ids.append(message_id)
        if not ids and first_error is not None:
            raise first_error
        return ids

    async def send(self, sender: AgentRef | None, to: Destination, payload: bytes, *,
                   channel: int | str | None = None, acknowledged: bool = False, traceparent: str = ""
                   ) -> list[int]:
        """Like :meth:`send_nowait`, but waits for outbound queue (and unacknowledged-window) space."""
        while True:
            try:
                return self.send_nowait(sender, to, payload, channel=channel, acknowledged=acknowledged,
                                        traceparent=traceparent)
            except QueueFull as full:
                full.peer.space.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await full.peer.space.wait()

    async def call(self, sender: AgentRef | None, to: Destination, payload: bytes, *,
                   timeout: float | None = None, channel: int | str | None = None, traceparent: str = ""
                   ) -> Message:
        """Send a call and wait for the reply; raises the typed error of an ERROR reply.

        DeadlineExceeded after ``timeout`` seconds (late replies are dropped),
        Unavailable at once when the destination node goes down or leaves,
        NotFound / ResourceExhausted from the receiving side. A group destination
        must use mode "one".
        """
        src = self._anonymous(sender)
        ch = wire.parse_channel(channel)
        if isinstance(to, Group) and to.mode != "one":
            raise InvalidArgument("a call to a group needs mode 'one'")
        if len(payload) > self.config.max_message_size:
            raise MessageTooLarge(f"{len(payload)} bytes is above the maximum {self.config.max_message_size}")
        timeout = timeout or self.config.default_call_timeout
        target = self._resolve(src.tenant, to)[0]
        deadline_ms = int(time.time() * 1000 + timeout * 1000)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        peer = self._remote_peer(target, len(payload))
        if peer is not None:
            call_id = next(self._ids)
            pending = self._register_call(call_id, future, src, target.node_id, timeout)
            data = self._header(src, wire.CALL, ch, target, 0, traceparent, call_id, 0, deadline_ms)
            try:
                self._enqueue_items(peer, self._wire_channel(ch), [(data, payload)], 0, urgent=True)
            except DataPlaneError:
                self._forget_call(pending)
                raise
        else:
            env = self._envelope(src, wire.CALL, ch, target, 0, traceparent)
            env.deadline_unix_ms = deadline_ms
            pending = self._register_call(env.id, future, src, target.node_id, timeout)
            try:
                self._route(env, payload)
            except DataPlaneError:
                self._forget_call(pending)
                raise
        try:
            return await future
        finally:
            self._forget_call(pending)

    def _register_call(self, call_id: int, future: asyncio.Future[Message] | None, caller: AgentRef,
                       node_id: str, timeout: float) -> PendingCall:
        pending = PendingCall(call_id, future, caller, node_id)
        self._calls[call_id] = pending
        assert self._loop is not None
        pending.timer = self._loop.call_later(timeout, self._expire_call, call_id)
        return pending

    def _forget_call(self, pending: PendingCall) -> None:
        self._calls.pop(pending.id, None)
        if pending.timer is not None:
            pending.timer.cancel()

    def _expire_call(self, call_id: int) -> None:
        pending = self._calls.pop(call_id, None)
        if pending is not None:
            self._fail_call(pending, DeadlineExceeded("no reply before the deadline"))

    def _fail_call(self, pending: PendingCall, error: DataPlaneError) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.future is not None:
            if not pending.future.done():
                pending.future.set_exception(error)
            return
        # An attached caller: tell it with an ERROR envelope.
        env = pb.Envelope(version=wire.VERSION, id=next(self._ids), kind=wire.ERROR, channel=wire.HIGH,
                          tenant=pending.caller.tenant, correlation_id=pending.id,
                          error_code=error.code_value, error_message=error.message)
        env.to_agent.CopyFrom(pending.caller.to_proto())
        self._deliver(env, b"")

    def reply(self, sender: AgentRef | None, request: Message, payload: bytes) -> None:
        """Answer a call with ``payload`` (does nothing for a message that is not a call)."""
        if request.kind != wire.CALL:
            return
        self.send_reply(sender, AgentRef.from_proto(request.envelope.sender), request.id, payload,
                        channel=request.channel)

    def send_reply(self, sender: AgentRef | None, caller: AgentRef, call_id: int, payload: bytes, *,
                   channel: int | str | None = None) -> int:
        """Send the REPLY to call ``call_id`` made by ``caller`` (the gRPC face's Send with reply_to_id)."""
        src = self._anonymous(sender)
        if len(payload) > self.config.max_message_size:
            raise MessageTooLarge(f"{len(payload)} bytes is above the maximum {self.config.max_message_size}")
        target = AgentRef(tenant_or_default(caller.tenant), caller.node_id or self.node_id, caller.agent_id)
        ch = wire.parse_channel(channel)
        peer = self._remote_peer(target, len(payload))
        if peer is not None:
            reply_id = next(self._ids)
            data = self._header(src, wire.REPLY, ch, target, 0, "", reply_id, call_id)
            self._enqueue_items(peer, self._wire_channel(ch), [(data, payload)], 0)
            return reply_id
        env = self._envelope(src, wire.REPLY, ch, target)
        env.correlation_id = call_id
        self._route(env, payload)
        return env.id

    def originate_fast(self, sender: AgentRef, env: pb.Envelope, payload: bytes, to: Destination
                       ) -> list[AgentRef] | None:
        """Route an attached endpoint's message to one remote endpoint without building an Envelope.

        Returns None when done, else the resolved targets (nothing sent: the destination is local,
        a group of several, or the payload needs chunking) for :meth:`originate`, so a round-robin
        group advances once per message.

        The endpoint's envelope is forwarded as it came, with meshd's authoritative fields appended
        (``wire.override_suffix``: sender, tenant, version, channel, flags, resolved destination).
        Protobuf keeps the last value of a repeated scalar field and switches a oneof to the last
        member seen, so the receiver reads meshd's values whatever the endpoint wrote: no spoofing,
        no re-encoding (bench/dataplane.py through two meshd: building and serializing a new
        envelope per message was most of meshd-1's time).
        """
        size = len(payload)
        if size > self.config.max_message_size:
            raise MessageTooLarge(f"{size} bytes is above the maximum {self.config.max_message_size}")
        targets = self._resolve(sender.tenant, to)
        if len(targets) != 1:
            return targets
        target = targets[0]
        peer = self._remote_peer(target, size)
        if peer is None:
            return targets
        ch = env.channel or wire.NORMAL
        flags = env.flags & wire.FLAG_ACK
        key = (sender, target, ch, flags)
        suffix = self._suffixes.get(key)
        if suffix is None:
            if len(self._suffixes) >= 4096:
                self._suffixes.clear()
            suffix = self._suffixes[key] = wire.override_suffix(sender, target, ch, flags)
        data = env.SerializeToString() + suffix
        kind = env.kind
        pending = None
        if kind == wire.CALL:
            timeout = self.config.default_call_timeout
            deadline = env.deadline_unix_ms
            if deadline:
                timeout = max(0.001, deadline / 1000 - time.time())
            pending = self._register_call(env.id, None, sender, target.node_id, timeout)
        try:
            self._enqueue_items(peer, self._wire_channel(ch), [(data, payload)], env.id if flags else 0,
                                urgent=kind != wire.CAST)
        except DataPlaneError:
            if pending is not None:
                self._forget_call(pending)
            raise
        return None

    def originate(self, env: pb.Envelope, payload: bytes, to: Destination, caller: AgentRef | None = None,
                  timeout: float = 0.0, targets: list[AgentRef] | None = None) -> None:
        """Route an envelope built elsewhere (attached endpoints): resolve ``to``, register calls, route.

        For a CALL, ``caller`` gets the reply (or an ERROR) as a message. ``targets``: already resolved
        by the caller (see :meth:`originate_fast`), so a round-robin group is not advanced twice.
        """
        if len(payload) > self.config.max_message_size:
            raise MessageTooLarge(f"{len(payload)} bytes is above the maximum {self.config.max_message_size}")
        if targets is None:
            targets = self._resolve(tenant_or_default(env.tenant), to)
        for index, target in enumerate(targets):
            copy = env if index == 0 else copy_with_new_id(env, next(self._ids))
            copy.to_agent.CopyFrom(target.to_proto())
            if copy.kind == wire.CALL and caller is not None:
                pending = self._register_call(copy.id, None, caller, target.node_id, timeout)
                try:
                    self._route(copy, payload)
                except DataPlaneError:
                    self._forget_call(pending)
                    raise
            else:
                self._route(copy, payload)

    def _route(self, env: pb.Envelope, payload: bytes | memoryview) -> None:
        node = env.to_agent.node_id
        if not node or node == self.node_id:
            env.to_agent.node_id = self.node_id
            self._deliver(env, bytes(payload) if isinstance(payload, memoryview) else payload)
            return
        peer = self._peers.get(node)
        if peer is None:
            raise Unavailable(f"node {node!r} is not a member")
        if peer.down:
            raise Unavailable(f"node {node!r} is not responding")
        self._enqueue(peer, env, payload)

    def _wire_channel(self, channel: int) -> int:
        return wire.NORMAL if self.config.single_channel else channel

    def _enqueue(self, peer: Peer, env: pb.Envelope, payload: bytes | memoryview) -> None:
        cfg = self.config
        if len(payload) > cfg.chunk_size:
            ch = self._wire_channel(wire.BULK)
            chunks = split_payload(payload, cfg.chunk_size)
            items: list[tuple[bytes, bytes | memoryview]] = []
            for index, chunk in enumerate(chunks):
                part = copy_with_new_id(env, env.id)
                part.flags |= wire.FLAG_CHUNK
                part.chunk_index, part.chunk_count, part.total_size = index, len(chunks), len(payload)
                items.append((part.SerializeToString(), chunk))
        else:
            ch = self._wire_channel(env.channel)
            items = [(env.SerializeToString(), payload)]
        self._enqueue_items(peer, ch, items, env.id if env.flags & wire.FLAG_ACK else 0)

    def _enqueue_items(self, peer: Peer, ch: int, items: list[tuple[bytes, bytes | memoryview]], ack_id: int,
                       urgent: bool = False) -> None:
        """Queue serialized (envelope, payload) pairs to a peer; ``ack_id`` non-zero: keep for retransmission.

        ``urgent`` (a call): when the queue was empty, send at once instead of at the next loop turn
        (bench/dataplane.py call p50); a burst still coalesces behind the first message.
        """
        cfg = self.config
        queue = peer.queues[ch]
        if len(queue) >= cfg.max_outbound:
            raise QueueFull(peer)
        if ack_id:
            if len(peer.unacked) >= cfg.max_unacked:
                raise QueueFull(peer, f"{len(peer.unacked)} unacknowledged messages to {peer.node_id}")
            peer.unacked[ack_id] = [ch, items, self.clock()]
        was_empty = not queue
        queue.extend(items)
        if len(queue) >= cfg.max_batch or len(items) > 1 or (urgent and was_empty):
            self._flush_queue(peer, ch)
        else:
            self._dirty.add((peer, ch))
            self._schedule_flush()

    def hold_flush(self) -> None:
        """Defer flushes until :meth:`release_flush` (a receive step flushes once, at its end)."""
        self._pumping = True

    def release_flush(self) -> None:
        """End a step started with :meth:`hold_flush`: flush what it queued, now."""
        self._pumping = False
        if self._flush_scheduled:
            self._flush_all()

    def schedule_flush(self) -> None:
        """Flush queued messages when the loop goes idle (or at the end of the current receive step)."""
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            if self._pumping:
                return  # the receive pump flushes after its step (no extra loop turn for a reply)
            assert self._loop is not None
            self._loop.call_soon(self._flush_all)

    def _flush_all(self) -> None:
        """Flush every dirty (peer, channel) queue: the 'flush on idle' of the coalescing design."""
        self._flush_scheduled = False
        for peer in self._peers.values():
            if peer.acks_due:
                ack = pb.Envelope(version=wire.VERSION, kind=wire.SYSTEM, channel=wire.CONTROL,
                                  system_op=pb.SYSTEM_OP_ACK, acked_ids=peer.acks_due)
                peer.acks_due = []
                ch = self._wire_channel(wire.CONTROL)
                peer.queues[ch].append((ack.SerializeToString(), b""))
                self._dirty.add((peer, ch))
        dirty, self._dirty = self._dirty, set()
        for peer, ch in dirty:
            self._flush_queue(peer, ch)
        if self.attach is not None:
            self.attach.flush()

    def _flush_queue(self, peer: Peer, ch: int) -> None:
        if ch in peer.blocked or not peer.sockets:
            return
        cfg = self.config
        queue = peer.queues[ch]
        sock = peer.sockets[ch]
        metrics = self._metrics[ch]
        pack_below = cfg.pack_below
        while queue:
            envs, payloads, size, packed = wire.take_batch(queue, cfg.max_batch, cfg.max_batch_bytes, pack_below)
            frames = wire.batch_frames(self._prefix, envs, payloads, packed)
            try:
                transport.send_frames(sock, frames)
            except zmq.Again:
                queue.extendleft(reversed(list(zip(envs, payloads, strict=True))))
                peer.blocked.add(ch)
                assert self._tg is not None
                self._tg.create_task(self._unblock(peer, ch))
                return
            except zmq.ZMQError as exc:
                self.drops["send_error"] += len(envs)
                metrics.drop("send_error", len(envs))
                log.warning("send to %s failed: %s", peer.node_id, exc)
                return
            self.sent += len(envs)
            # Published by the timer (metrics.publish_all): three prometheus updates per batch were
            # ~1.8 µs on every call (bench/dataplane.py call p50).
            metrics.out_messages += len(envs)
            metrics.out_bytes += size
            if len(metrics.batch_sizes) < 4096:
                metrics.batch_sizes.append(len(envs))
        peer.space.set()

    async def _unblock(self, peer: Peer, ch: int) -> None:
        sock = peer.sockets.get(ch)
        if sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                await transport.wait_writable(sock)
        peer.blocked.discard(ch)
        if self._peers.get(peer.node_id) is peer:
            self._flush_queue(peer, ch)

    def _deliver(self, env: pb.Envelope, payload: bytes) -> None:
        """Deliver to a local endpoint or a waiting call; bounce NOT_FOUND / RESOURCE_EXHAUSTED."""
        kind = env.kind
        if kind == wire.REPLY or kind == wire.ERROR:
            pending = self._calls.pop(env.correlation_id, None)
            if pending is not None:
                if pending.timer is not None:
                    pending.timer.cancel()
                if pending.future is not None:
                    if not pending.future.done():
                        if kind == wire.REPLY:
                            pending.future.set_result(Message(env, payload))
                        else:
                            pending.future.set_exception(error_from_code(env.error_code, env.error_message))
                    return
            elif kind == wire.REPLY:
                self.drops["late_reply"] += 1
                return
        elif kind == wire.CALL and env.deadline_unix_ms and time.time() * 1000 > env.deadline_unix_ms:
            self.drops["expired_call"] += 1
            return
        target = env.to_agent
        tenant = target.tenant or "default"
        endpoint = self.endpoints.get((tenant, target.agent_id))
        if endpoint is None or tenant != (env.tenant or "default"):
            self._bounce(env, NotFound(f"no endpoint {target.agent_id!r} on node {self.node_id}"))
            return
        try:
            accepted = endpoint.offer(Message(env, payload))
        except DataPlaneError as exc:
            self._bounce(env, exc)
            return
        if not accepted:
            self._bounce(env, ResourceExhausted(f"mailbox of {target.agent_id!r} is full"))

    def _bounce(self, env: pb.Envelope, error: DataPlaneError) -> None:
        """Send a typed ERROR back to the sender of a CAST or CALL (others are dropped and counted)."""
        reason = error.code.name.lower()
        self.drops[reason] += 1
        if env.kind not in (wire.CAST, wire.CALL) or not env.sender.agent_id and env.kind == wire.CAST:
            return
        back = pb.Envelope(version=wire.VERSION, id=next(self._ids), kind=wire.ERROR, channel=env.channel,
                           tenant=env.tenant, correlation_id=env.id, error_code=error.code_value,
                           error_message=error.message, sent_unix_ns=time.time_ns())
        back.sender.CopyFrom(env.to_agent)
        back.to_agent.CopyFrom(env.sender)
        try:
            self._route(back, b"")
        except DataPlaneError:
            self.drops["bounce_failed"] += 1

    def bounce(self, message: Message, error: DataPlaneError) -> None:
        """Answer a delivered CAST or CALL with a typed ERROR to its sender (an endpoint that will not handle it)."""
        self._bounce(message.envelope, error)

    def bounce_serialized(self, data: bytes, error: DataPlaneError) -> None:
        """Bounce a queued, already-serialized envelope that could not be delivered (see :meth:`_bounce`)."""
        try:
            env = pb.Envelope.FromString(data)
        except Exception:  # our own serialization: cannot fail short of a bug; never crash a flush for it
            self.drops["bounce_failed"] += 1
            return
        if env.kind == wire.REPLY or env.kind == wire.ERROR:
            self.drops[error.code.name.lower()] += 1
            return
        self._bounce(env, error)

    # ----------------------------------------------------------------- timers

    async def _timer_loop(self) -> None:
        """Heartbeats, failure detection, retransmission, reassembly expiry, queue-depth gauges."""
        cfg = self.config
        tick = min(cfg.heartbeat_interval, cfg.retransmit_after) / 2
        last_heartbeat = 0.0
        while True:
            await asyncio.sleep(tick)
            now = self.clock()
            if now - last_heartbeat >= cfg.heartbeat_interval:
                last_heartbeat = now
                ch = self._wire_channel(wire.CONTROL)
                for peer in self._peers.values():
                    peer.queues[ch].append((self._heartbeat, b""))
                    self._dirty.add((peer, ch))
                self._schedule_flush()
            for node_id, state in self._detector.evaluate(now):
                peer = self._peers.get(node_id)
                if state is PeerState.DOWN and peer is not None:
                    peer.down = True
                    log.warning("peer %s is down (silent for %.1fs)", node_id, cfg.down_after)
                    self._fail_node(node_id, f"node {node_id} is not responding")
                elif state is PeerState.SUSPECT:
                    log.info("peer %s is suspect", node_id)
            self._reassembler.expire(now)
            self._retransmit(now)
            for ch in wire.CHANNELS:
                metrics = self._metrics[ch]
                metrics.queue_depth.set(sum(len(p.queues[ch]) for p in self._peers.values()))
            publish_metrics()
            # Safety net for a missed FD edge (the reader callback normally does all the work).
            self._on_readable()

    def _retransmit(self, now: float) -> None:
        horizon = now - self.config.retransmit_after
        for peer in self._peers.values():
            if peer.down or not peer.unacked:
                continue
            for entry in peer.unacked.values():
                if entry[2] <= horizon:
                    entry[2] = now
                    peer.queues[entry[0]].extend(entry[1])
                    self._dirty.add((peer, entry[0]))
                    self.drops["retransmitted"] += 1
            self._schedule_flush()

    # ----------------------------------------------------------------- introspection

    def statistics(self) -> dict[str, Any]:
        """An immutable-by-copy snapshot of counters for tests, logs and the gRPC face."""
        publish_metrics()
        return {
            "node_id": self.node_id,
            "sent": self.sent,
            "received": self.received,
            "rejected": dict(self.rejected),
            "drops": dict(self.drops),
            "pending_calls": len(self._calls),
            "endpoints": len(self.endpoints),
            "peers": {n: (self._detector.state(n) or PeerState.ALIVE).value for n in self._peers},
            "unacked": {n: len(p.unacked) for n, p in self._peers.items()},
            "scheduler_rounds": self._scheduler.rounds,
            "reassembly_bytes": self._reassembler.bytes_pending,
            "curve_handshakes_held": self.curve_handshakes_held,
        }
