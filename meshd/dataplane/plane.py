"""The data plane of one meshd: four priority channels to every peer, local endpoints, calls.

:class:`DataPlane` owns the sockets and wires its parts together; each part
has one job and an explicit interface:

* :class:`~meshd.dataplane.peers.PeerSet` — the peer nodes and the DEALERs to them;
* :class:`~meshd.dataplane.routing.Router` — destinations to local mailboxes or peer queues,
  and the send verbs with their fast paths;
* :class:`~meshd.dataplane.calls.PendingCalls` — calls waiting for their reply;
* :class:`~meshd.dataplane.outbound.Outbound` — per-(peer, channel) coalescing and flushing;
* :class:`~meshd.dataplane.receiving.Receiver` — the fair, non-blocking receive loop;
* :class:`~meshd.dataplane.timers.Timers` — heartbeats, failure detection, retransmission;
* :class:`~meshd.dataplane.attach_server.AttachServer` — processes attached over ipc.

meshd drives it from outside:

* ``await start()`` binds the channels (``addresses``) and the attach socket;
* the membership watch calls ``peer_up`` / ``peer_down``;
* local users open endpoints (``open_endpoint``) or attach over ipc
  (:mod:`mabeam.dataplane.attach`); the gRPC face sends with the three verbs:
  ``cast`` (waits for outbound queue space), ``call`` and ``reply``.
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
from mabeam.dataplane.errors import DataPlaneError, Unavailable
from mabeam.dataplane.message import AgentRef, Destination, Message, tenant_or_default
from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane import transport
from meshd.dataplane.attach_server import AttachServer
from meshd.dataplane.calls import PendingCalls
from meshd.dataplane.chunking import Reassembler
from meshd.dataplane.config import DataPlaneConfig
from meshd.dataplane.dedup import DedupWindow
from meshd.dataplane.endpoint import LocalEndpoint
from meshd.dataplane.failure import FailureDetector, PeerState
from meshd.dataplane.metrics import ChannelMetrics, PlaneCounters
from meshd.dataplane.metrics import publish_all as publish_metrics
from meshd.dataplane.outbound import Outbound
from meshd.dataplane.peers import PeerSet, QueueFull
from meshd.dataplane.receiving import Receiver
from meshd.dataplane.registry import InMemoryRegistry, RegistryView
from meshd.dataplane.routing import Mailbox, Router
from meshd.dataplane.scheduler import FairScheduler
from meshd.dataplane.timers import Timers, fail_node

log = logging.getLogger(__name__)

#: How long ``cast`` waits for a full peer queue before trying again (it also wakes when space frees).
_SPACE_RECHECK = 0.5


class DataPlane:
    """One node's data plane. See the module docstring and docs/dataplane.md for the contract."""

    def __init__(self, node_id: str, config: DataPlaneConfig | None = None, registry: RegistryView | None = None,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self.config = config = config or DataPlaneConfig()
        self.registry: RegistryView = registry if registry is not None else InMemoryRegistry()
        self.clock = clock
        self.addresses: dict[str, str] = {}
        self.attach_address = ""
        self.curve_public_key: str | None = None
        self.counters = PlaneCounters()
        self.endpoints: dict[tuple[str, str], Mailbox] = {}
        self._ids = itertools.count(random.getrandbits(62) | 1)
        self._metrics = {ch: ChannelMetrics(wire.channel_name(ch)) for ch in wire.CHANNELS}
        self._scheduler = FairScheduler(dict(zip(wire.CHANNELS, config.quanta, strict=True)))
        self._reassembler = Reassembler(config.max_message_size, config.max_reassembly_bytes,
                                        config.reassembly_timeout, config.reassembly_pool_bytes)
        self._dedup = DedupWindow(config.dedup_window)
        self.peers = PeerSet(node_id, config, FailureDetector(config.suspect_after, config.down_after), clock,
                             self.counters)
        self.outbound = Outbound(node_id, config, self.peers, self._metrics, self.counters, clock)
        self.calls = PendingCalls(self._ids, self._deliver)
        self.router = Router(node_id, config, self.registry, self.peers, self.outbound, self.calls, self.endpoints,
                             self._ids, self.counters)
        self.attach: AttachServer | None = None
        self._receiver: Receiver | None = None
        self._routers: dict[int, zmq.Socket] = {}
        self._contexts: transport.ContextSet | None = None
        self._readiness: transport.Readiness | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tmpdir: str | None = None

    def _deliver(self, env: pb.Envelope, payload: bytes) -> None:
        # PendingCalls is built before the router it delivers through (an attached caller's ERROR).
        self.router.deliver(env, payload)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the four channels and the attach socket, and start the receive and timer tasks."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        idle = (wire.BULK,) if cfg.bulk_sched_idle and not cfg.single_channel and transport.sched_idle_ok() else ()
        self._contexts = transport.ContextSet(wire.CHANNELS, cfg.context_per_channel, idle)
        curve_keys: tuple[bytes, bytes] | None = None
        if cfg.curve:
            if cfg.curve_public_key and cfg.curve_secret_key:
                curve_keys = (cfg.curve_public_key.encode(), cfg.curve_secret_key.encode())
            else:
                curve_keys = zmq.curve_keypair()
            self.curve_public_key = curve_keys[0].decode()
            self._contexts.enable_curve_auth(self.peers.key_allowed)
        self.peers.bind(self._contexts, curve_keys)
        max_msg = cfg.chunk_size + (1 << 20)
        for offset, ch in enumerate(wire.CHANNELS):
            sock = transport.make_router(self._contexts.by_channel[ch], rcvhwm=cfg.rcvhwm, sndhwm=cfg.sndhwm,
                                         max_msg=max_msg, curve_keys=curve_keys)
            port = cfg.base_port + offset if cfg.base_port else 0
            self.addresses[wire.channel_name(ch)] = transport.bind_router(sock, cfg.bind_host, port)
            self._routers[ch] = sock
        self.outbound.start(loop)
        self.calls.start(loop)
        self._receiver = Receiver(cfg, self._routers, self._scheduler, self.peers, self._reassembler, self._dedup,
                                  self.outbound, self.router.deliver, self._metrics, self.counters, self.clock)
        self._receiver.start(loop)
        self._readiness = transport.Readiness(self._receiver.on_channel_readable)
        for ch, sock in self._routers.items():
            self._readiness.watch(sock, ch)
        self.attach = AttachServer(self, self._contexts.attach, self._contexts.attach_lane)
        self.outbound.flush_hooks.append(self.attach.flush)
        self.attach_address = self.attach.bind(self._attach_endpoint())
        timers = Timers(cfg, self.clock, self.peers, self.outbound, self.calls, self._reassembler, self._receiver,
                        self._metrics)
        self._runner = asyncio.create_task(self._run(timers), name=f"dataplane-{self.node_id}")

    def _attach_endpoint(self) -> str:
        cfg = self.config
        if cfg.attach_address:
            return cfg.attach_address
        if cfg.attach_tcp or not hasattr(zmq, "IPC_PATH_MAX_LEN") or not zmq.has("ipc"):
            return f"tcp://{cfg.bind_host}:0"
        self._tmpdir = tempfile.mkdtemp(prefix="mabeam-dp-")
        return f"ipc://{os.path.join(self._tmpdir, 'attach.sock')}"

    async def _run(self, timers: Timers) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self.outbound.run_in(tg)
                tg.create_task(timers.run())
                assert self.attach is not None
                tg.create_task(self.attach.run(tg))
        finally:
            self.outbound.run_in(None)

    async def stop(self) -> None:
        """Fail pending calls (UNAVAILABLE), close every socket and terminate the contexts."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        self.calls.fail_all(Unavailable("data plane stopped"))
        for peer in list(self.peers):
            self.peers.close_sockets(peer)
            self.outbound.drop(peer)
        self.peers.by_node.clear()
        for ep in list(self.endpoints.values()):
            if isinstance(ep, LocalEndpoint):
                ep.close()
        if self._readiness is not None:
            self._readiness.close()
        if self._receiver is not None:
            self._receiver.close()
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
        replaced = self.peers.up(node_id, data_addresses, curve_public_key)
        if replaced is not None:
            self.peers.close_sockets(replaced)
            self.outbound.drop(replaced)

    def peer_down(self, node_id: str) -> None:
        """The peer left (membership): fail its pending calls with UNAVAILABLE now and close its sockets."""
        peer = self.peers.remove(node_id)
        fail_node(self.calls, self._reassembler, node_id, f"node {node_id} left the cluster")
        if peer is not None:
            self.counters.drops["peer_left_unacked"] += len(peer.unacked)
            self.peers.close_sockets(peer)
            self.outbound.drop(peer)

    def peer_state(self, node_id: str) -> PeerState | None:
        """What the failure detector thinks of a peer (None when not a peer)."""
        return self.peers.detector.state(node_id)

    # ----------------------------------------------------------------- endpoints

    def open_endpoint(self, agent_id: str | None = None, tenant: str | None = None, *,
                      max_pending: int | None = None, handler: Callable[[Message], Any] | None = None
                      ) -> LocalEndpoint:
        """Open an in-process endpoint (mailbox, or ``handler`` called per message) on this node."""
        ref = AgentRef(tenant_or_default(tenant), self.node_id, agent_id or f"ep-{next(self._ids):x}")
        key = (ref.tenant, ref.agent_id)
        if key in self.endpoints:
            raise DataPlaneError(f"endpoint {ref.agent_id!r} exists", code=grpc.StatusCode.ALREADY_EXISTS)
        limit = max_pending or self.config.default_max_pending
        bound = self.mailbox_bound(ref.tenant)
        ep = LocalEndpoint(self, ref, min(limit, bound) if bound else limit, handler)
        self.endpoints[key] = ep
        return ep

    def mailbox_bound(self, tenant: str) -> int:
        """The tenant's ``max_mailbox`` quota (0: none): a mailbox opened here is lowered to it."""
        limiter = self.router.limiter
        quota = limiter.book.quotas.get(tenant) if limiter is not None else None
        return int(quota.max_mailbox) if quota is not None else 0

    def close_endpoint(self, endpoint: Mailbox) -> None:
        """Forget an endpoint (called by its ``close``)."""
        key = (endpoint.ref.tenant, endpoint.ref.agent_id)
        if self.endpoints.get(key) is endpoint:
            del self.endpoints[key]

    # ----------------------------------------------------------------- sending: cast, call, reply

    async def cast(self, sender: AgentRef | None, to: Destination, payload: bytes, *,
                   channel: int | str | None = None, acknowledged: bool = False, traceparent: str = ""
                   ) -> list[int]:
        """Send a one-way message; returns the id per receiver. Waits while a peer's outbound queue is full.

        Raises NotFound (unknown name/group/endpoint on this node), Unavailable
        (destination node unknown or down), MessageTooLarge. A group in mode "all"
        gets one copy per member; failures of single members are counted, not
        raised, unless all fail. ``sender`` None sends anonymously (no bounce comes back).
        """
        while True:
            try:
                return self.router.cast(sender, to, payload, channel=channel, acknowledged=acknowledged,
                                        traceparent=traceparent)
            except QueueFull as full:
                full.peer.space.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_SPACE_RECHECK):
                        await full.peer.space.wait()

    async def call(self, sender: AgentRef | None, to: Destination, payload: bytes, *,
                   timeout: float | None = None, channel: int | str | None = None, traceparent: str = ""
                   ) -> Message:
        """Send a call and wait for the reply (see :meth:`Router.call <meshd.dataplane.routing.Router.call>`)."""
        return await self.router.call(sender, to, payload, timeout=timeout, channel=channel, traceparent=traceparent)

    def reply(self, sender: AgentRef | None, caller: AgentRef, call_id: int, payload: bytes, *,
              channel: int | str | None = None) -> int:
        """Send the REPLY to call ``call_id`` made by ``caller``; returns the reply's message id."""
        return self.router.reply(sender, caller, call_id, payload, channel=channel)

    # ----------------------------------------------------------------- introspection

    @property
    def rejected(self) -> Counter[str]:
        """Inbound frames refused, by reason."""
        return self.counters.rejected

    @property
    def drops(self) -> Counter[str]:
        """Messages not delivered (or retransmitted), by reason."""
        return self.counters.drops

    @property
    def curve_handshakes_held(self) -> int:
        """CURVE handshakes held right now, waiting for membership to announce the client's key."""
        return self.peers.curve_handshakes_held

    @property
    def sent(self) -> int:
        """Envelopes sent on the channels."""
        return self.counters.sent

    @property
    def received(self) -> int:
        """Envelopes received on the channels."""
        return self.counters.received

    def statistics(self) -> dict[str, Any]:
        """An immutable-by-copy snapshot of counters for tests, logs and the gRPC face."""
        publish_metrics()
        peers = self.peers
        return {
            "node_id": self.node_id,
            "sent": self.counters.sent,
            "received": self.counters.received,
            "rejected": dict(self.counters.rejected),
            "drops": dict(self.counters.drops),
            "pending_calls": len(self.calls),
            "endpoints": len(self.endpoints),
            "peers": {p.node_id: (peers.detector.state(p.node_id) or PeerState.ALIVE).value for p in peers},
            "unacked": {p.node_id: len(p.unacked) for p in peers},
            "scheduler_rounds": self._scheduler.rounds,
            "reassembly_bytes": self._reassembler.bytes_pending,
            "curve_handshakes_held": peers.curve_handshakes_held,
        }
