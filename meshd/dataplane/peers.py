"""The peer set of one data plane: per-peer outbound state and the DEALERs to each peer node.

A :class:`Peer` is a plain container (its DEALER per channel, its per-channel
outbound queues, the acknowledged messages it has not acked yet). The
:class:`PeerSet` owns every peer of one node: it opens the four DEALERs when
membership says a node is up (``up``), closes them when it leaves
(``remove``), keeps the CURVE keys allowed to connect, and answers "which
peer carries a message to this node" (``require``). It never queues or
sends: that is :mod:`meshd.dataplane.outbound`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping

import zmq

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import InvalidArgument, ResourceExhausted, Unavailable
from mabeam.dataplane.message import AgentRef, Message
from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane import transport
from meshd.dataplane.config import DataPlaneConfig
from meshd.dataplane.failure import FailureDetector
from meshd.dataplane.metrics import PlaneCounters

log = logging.getLogger(__name__)

#: One serialized envelope and its payload, as queued for a peer or an attached endpoint.
Item = tuple[bytes, bytes | memoryview]


class Unacked:
    """An acknowledged-mode message kept for retransmission until the peer acks it."""

    __slots__ = ("channel", "items", "sent_at")

    def __init__(self, channel: int, items: list[Item], sent_at: float) -> None:
        self.channel = channel
        self.items = items
        self.sent_at = sent_at


class Peer:
    """Outbound state for one peer node: its DEALERs, per-channel queues, unacked messages."""

    def __init__(self, node_id: str, addresses: Mapping[str, str], curve_key: str | None) -> None:
        self.node_id = node_id
        self.addresses = dict(addresses)
        self.curve_key = curve_key or None
        self.sockets: dict[int, zmq.Socket] = {}
        self.queues: dict[int, deque[Item]] = {ch: deque() for ch in wire.CHANNELS}
        self.blocked: set[int] = set()
        self.unacked: dict[int, Unacked] = {}
        self.acks_due: list[int] = []
        self.down = False
        self.space = asyncio.Event()


class PendingCall:
    """A call waiting for its reply: a future (in-process caller) or an attached caller's address."""

    __slots__ = ("id", "future", "caller", "node_id", "timer")

    def __init__(self, call_id: int, future: asyncio.Future[Message] | None, caller: AgentRef, node_id: str) -> None:
        self.id = call_id
        self.future = future
        self.caller = caller
        self.node_id = node_id
        self.timer: asyncio.TimerHandle | None = None


class QueueFull(ResourceExhausted):
    """Outbound queue to a peer is full (``DataPlane.cast`` waits on ``peer.space``; the sync path raises)."""

    def __init__(self, peer: Peer, why: str = "") -> None:
        super().__init__(why or f"outbound queue to {peer.node_id} is full")
        self.peer = peer


def copy_with_new_id(env: pb.Envelope, new_id: int) -> pb.Envelope:
    """A copy of ``env`` with another id (group copies, chunks)."""
    copy = pb.Envelope()
    copy.CopyFrom(env)
    copy.id = new_id
    return copy


class PeerSet:
    """Every peer of one node, keyed by node id, with the DEALERs to each (see the module docstring)."""

    def __init__(self, node_id: str, config: DataPlaneConfig, detector: FailureDetector,
                 clock: Callable[[], float], counters: PlaneCounters) -> None:
        self.node_id = node_id
        self.config = config
        self.detector = detector
        self.clock = clock
        self.counters = counters
        self.by_node: dict[str, Peer] = {}
        self.allowed_keys: set[str] = set()
        self._keys_changed = asyncio.Event()
        #: CURVE handshakes held right now, waiting for membership to announce the client's key.
        self.curve_handshakes_held = 0
        self._contexts: transport.ContextSet | None = None
        self._curve: tuple[bytes, bytes] | None = None  # our (public, secret) key when CURVE is on

    def bind(self, contexts: transport.ContextSet, curve: tuple[bytes, bytes] | None) -> None:
        """Use these contexts for new DEALERs (and our CURVE key pair, when CURVE is on)."""
        self._contexts = contexts
        self._curve = curve
        if curve is not None:
            self._allow_key(curve[0].decode())

    def __iter__(self) -> Iterator[Peer]:
        return iter(self.by_node.values())

    def __len__(self) -> int:
        return len(self.by_node)

    def get(self, node_id: str) -> Peer | None:
        """The peer for ``node_id``, or None."""
        return self.by_node.get(node_id)

    def require(self, node_id: str) -> Peer:
        """The peer that carries messages to ``node_id``; Unavailable when it is unknown or down."""
        peer = self.by_node.get(node_id)
        if peer is None:
            raise Unavailable(f"node {node_id!r} is not a member")
        if peer.down:
            raise Unavailable(f"node {node_id!r} is not responding")
        return peer

    def up(self, node_id: str, data_addresses: Mapping[str, str], curve_public_key: str | None) -> Peer | None:
        """Open the four DEALERs to a peer; returns the replaced peer (to be closed by the caller), if any.

        Does nothing (returns None) for ourselves, before :meth:`bind`, or when the peer is already
        connected to the same addresses and key.
        """
        if node_id == self.node_id or self._contexts is None:
            return None
        existing = self.by_node.get(node_id)
        if existing is not None:
            if existing.addresses == dict(data_addresses) and existing.curve_key == (curve_public_key or None):
                return None
            self.by_node.pop(node_id)
            self._forget_key(existing)
        peer = Peer(node_id, data_addresses, curve_public_key)
        curve = None
        if self._curve is not None:
            if not curve_public_key:
                log.warning("peer %s has no CURVE key; not connecting", node_id)
                return existing
            self._allow_key(curve_public_key)
            curve = (curve_public_key.encode(), self._curve[0], self._curve[1])
        for ch in wire.CHANNELS:
            address = data_addresses.get(wire.channel_name(ch))
            if not address:
                for sock in peer.sockets.values():
                    sock.close(linger=0)
                raise InvalidArgument(f"peer {node_id} has no {wire.channel_name(ch)} address")
            peer.sockets[ch] = transport.make_dealer(self._contexts.by_channel[ch], self.node_id.encode(), address,
                                                     sndhwm=self.config.sndhwm, curve=curve)
        self.by_node[node_id] = peer
        self.detector.add(node_id, self.clock())
        return existing

    def remove(self, node_id: str) -> Peer | None:
        """Forget a peer (it left); returns it for the caller to close, or None when unknown."""
        peer = self.by_node.pop(node_id, None)
        self.detector.remove(node_id)
        if peer is not None:
            self._forget_key(peer)
        return peer

    def _forget_key(self, peer: Peer) -> None:
        if peer.curve_key:
            self.allowed_keys.discard(peer.curve_key)

    async def key_allowed(self, key: str, channel: str = "all") -> bool:
        """The CURVE authenticator's question: may a client with this public key connect?

        A peer often learns our NodeInfo (and dials us) a few milliseconds before our own membership
        watch announces its key. libzmq never retries a handshake that was denied, so denying it here
        would silence that peer for good (found on the multi-host test bed): hold the handshake until
        the key is announced, for at most ``curve_key_wait`` seconds, and deny only keys that stay unknown.
        """
        if key in self.allowed_keys:
            return True
        deadline = self.clock() + self.config.curve_key_wait
        self.curve_handshakes_held += 1
        try:
            while key not in self.allowed_keys:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    self.counters.reject(channel, "curve_denied")
                    return False
                changed = self._keys_changed
                try:
                    async with asyncio.timeout(remaining):  # not wait_for: 3.11's can swallow a cancel
                        await changed.wait()
                except TimeoutError:
                    pass
            return True
        finally:
            self.curve_handshakes_held -= 1

    def _allow_key(self, key: str) -> None:
        self.allowed_keys.add(key)
        self._keys_changed.set()
        self._keys_changed = asyncio.Event()

    @staticmethod
    def close_sockets(peer: Peer) -> None:
        """Close a peer's DEALERs (its queues are the outbound side's to clear)."""
        for sock in peer.sockets.values():
            sock.close(linger=0)
        peer.sockets.clear()
