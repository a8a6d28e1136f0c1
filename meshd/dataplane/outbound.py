"""Outbound coalescing: per-(peer, channel) queues, flushed as batches when the loop goes idle.

Everything a node sends to its peers goes through :class:`Outbound`:

* ``enqueue`` / ``enqueue_items`` put serialized envelopes on a peer's channel
  queue (a payload above ``chunk_size`` is split into chunks on bulk first);
  acknowledged messages are also kept in the peer's ``unacked`` table until
  the peer acks them (``retransmit`` re-queues the overdue ones).
* A queue is flushed at once when it holds a full batch, when several items
  were queued together, or for an urgent message (a call) into an empty
  queue; otherwise the (peer, channel) is marked dirty and every dirty queue
  is flushed by one ``call_soon`` when the loop goes idle (``schedule``).
* A receive step (or an attach step) brackets its work with ``hold`` /
  ``release``: replies and forwards it produced leave in one flush at its end,
  not one loop turn later.
* A full ZeroMQ pipe (``EAGAIN``) puts the items back, marks the channel
  blocked and lets a task wait for POLLOUT before flushing again.

The attach server's mailboxes ride on the same flush (``flush_hooks``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import zmq

from mabeam.dataplane import envelope as wire
from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane import transport
from meshd.dataplane.chunking import split_payload
from meshd.dataplane.config import DataPlaneConfig
from meshd.dataplane.metrics import ChannelMetrics, PlaneCounters
from meshd.dataplane.peers import Item, Peer, PeerSet, QueueFull, Unacked, copy_with_new_id

log = logging.getLogger(__name__)


class Outbound:
    """The coalescing send side of one data plane (see the module docstring)."""

    def __init__(self, node_id: str, config: DataPlaneConfig, peers: PeerSet,
                 metrics: dict[int, ChannelMetrics], counters: PlaneCounters, clock: Callable[[], float]) -> None:
        self.config = config
        self.peers = peers
        self.metrics = metrics
        self.counters = counters
        self.clock = clock
        self.held = False
        self.scheduled = False
        #: Called at the end of every flush (the attach server sends its mailboxes' queues).
        self.flush_hooks: list[Callable[[], None]] = []
        self._prefix = wire.batch_prefix(node_id)
        self._dirty: set[tuple[Peer, int]] = set()
        self._heartbeat = pb.Envelope(version=wire.VERSION, kind=wire.SYSTEM, channel=wire.CONTROL,
                                      system_op=pb.SYSTEM_OP_HEARTBEAT).SerializeToString()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tg: asyncio.TaskGroup | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush on ``loop``."""
        self._loop = loop

    def run_in(self, tg: asyncio.TaskGroup | None) -> None:
        """Tasks that wait for a blocked pipe to drain belong to ``tg`` (None: the plane is stopping)."""
        self._tg = tg

    def wire_channel(self, channel: int) -> int:
        """The channel a message of ``channel`` travels on (everything on normal in single-channel mode)."""
        return wire.NORMAL if self.config.single_channel else channel

    # ----------------------------------------------------------------- queueing

    def enqueue(self, peer: Peer, env: pb.Envelope, payload: bytes | memoryview) -> None:
        """Queue one envelope for ``peer``, in chunks on bulk when the payload is above ``chunk_size``."""
        cfg = self.config
        if len(payload) > cfg.chunk_size:
            ch = self.wire_channel(wire.BULK)
            chunks = split_payload(payload, cfg.chunk_size)
            items: list[Item] = []
            for index, chunk in enumerate(chunks):
                part = copy_with_new_id(env, env.id)
                part.flags |= wire.FLAG_CHUNK
                part.chunk_index, part.chunk_count, part.total_size = index, len(chunks), len(payload)
                items.append((part.SerializeToString(), chunk))
        else:
            ch = self.wire_channel(env.channel)
            items = [(env.SerializeToString(), payload)]
        self.enqueue_items(peer, ch, items, env.id if env.flags & wire.FLAG_ACK else 0)

    def enqueue_items(self, peer: Peer, ch: int, items: list[Item], ack_id: int, urgent: bool = False) -> None:
        """Queue serialized (envelope, payload) pairs to a peer; ``ack_id`` non-zero: keep for retransmission.

        ``urgent`` (a call): when the queue was empty, send at once instead of at the next loop turn
        (bench/dataplane.py call p50); a burst still coalesces behind the first message.
        Raises QueueFull when the queue (or the unacknowledged window) is full.
        """
        cfg = self.config
        queue = peer.queues[ch]
        if len(queue) >= cfg.max_outbound:
            raise QueueFull(peer)
        if ack_id:
            if len(peer.unacked) >= cfg.max_unacked:
                raise QueueFull(peer, f"{len(peer.unacked)} unacknowledged messages to {peer.node_id}")
            peer.unacked[ack_id] = Unacked(ch, items, self.clock())
        was_empty = not queue
        queue.extend(items)
        if len(queue) >= cfg.max_batch or len(items) > 1 or (urgent and was_empty):
            self.flush_queue(peer, ch)
        else:
            self._dirty.add((peer, ch))
            self.schedule()

    def ack_later(self, peer: Peer, message_id: int) -> None:
        """Acknowledge ``message_id`` to ``peer`` with the next flush (acks of a batch travel together)."""
        peer.acks_due.append(message_id)
        self.schedule()

    def heartbeat(self) -> None:
        """Queue a heartbeat on control to every peer."""
        ch = self.wire_channel(wire.CONTROL)
        for peer in self.peers:
            peer.queues[ch].append((self._heartbeat, b""))
            self._dirty.add((peer, ch))
        self.schedule()

    def retransmit(self, now: float) -> None:
        """Queue again every acknowledged message a peer has not acked for ``retransmit_after`` seconds."""
        horizon = now - self.config.retransmit_after
        for peer in self.peers:
            if peer.down or not peer.unacked:
                continue
            for entry in peer.unacked.values():
                if entry.sent_at <= horizon:
                    entry.sent_at = now
                    peer.queues[entry.channel].extend(entry.items)
                    self._dirty.add((peer, entry.channel))
                    self.counters.drops["retransmitted"] += 1
            self.schedule()

    def drop(self, peer: Peer) -> None:
        """Forget everything queued for a peer that is closed (and wake senders waiting on it)."""
        for ch in wire.CHANNELS:
            self._dirty.discard((peer, ch))
            peer.queues[ch].clear()
        peer.space.set()

    def queue_depth(self, ch: int) -> int:
        """Envelopes queued on channel ``ch`` for all peers."""
        return sum(len(p.queues[ch]) for p in self.peers)

    # ----------------------------------------------------------------- flushing

    def hold(self) -> None:
        """Defer flushes until :meth:`release` (a receive step flushes once, at its end)."""
        self.held = True

    def release(self) -> None:
        """End a step started with :meth:`hold`: flush what it queued, now."""
        self.held = False
        if self.scheduled:
            self.flush_all()

    def schedule(self) -> None:
        """Flush queued messages when the loop goes idle (or at the end of the current held step)."""
        if not self.scheduled:
            self.scheduled = True
            if self.held:
                return  # the step flushes after its work (no extra loop turn for a reply)
            assert self._loop is not None
            self._loop.call_soon(self.flush_all)

    def flush_all(self) -> None:
        """Flush every dirty (peer, channel) queue: the 'flush on idle' of the coalescing design."""
        self.scheduled = False
        for peer in self.peers:
            if peer.acks_due:
                ack = pb.Envelope(version=wire.VERSION, kind=wire.SYSTEM, channel=wire.CONTROL,
                                  system_op=pb.SYSTEM_OP_ACK, acked_ids=peer.acks_due)
                peer.acks_due = []
                ch = self.wire_channel(wire.CONTROL)
                peer.queues[ch].append((ack.SerializeToString(), b""))
                self._dirty.add((peer, ch))
        dirty, self._dirty = self._dirty, set()
        for peer, ch in dirty:
            self.flush_queue(peer, ch)
        for hook in self.flush_hooks:
            hook()

    def flush_queue(self, peer: Peer, ch: int) -> None:
        """Send one (peer, channel) queue as batches until it is empty or the pipe is full."""
        if ch in peer.blocked or not peer.sockets:
            return
        cfg = self.config
        queue = peer.queues[ch]
        sock = peer.sockets[ch]
        metrics = self.metrics[ch]
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
                self.counters.drops["send_error"] += len(envs)
                metrics.drop("send_error", len(envs))
                log.warning("send to %s failed: %s", peer.node_id, exc)
                return
            self.counters.sent += len(envs)
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
        if self.peers.get(peer.node_id) is peer:
            self.flush_queue(peer, ch)
