"""The receiving side of :class:`meshd.dataplane.plane.DataPlane`: the fair, non-blocking receive loop.

:class:`Receiver` reads the four channel ROUTERs from their FD reader callbacks
(no task wake-up per message). Before every step it re-reads each socket's
readiness (``EVENTS``), lets :class:`FairScheduler` pick the channel, drains up
to that channel's credit with ``NOBLOCK`` (no await per message), validates
each batch once and hands its envelopes to ``deliver`` (the router's local
delivery) synchronously. Reassembly of chunks, acknowledgements (through
:class:`~meshd.dataplane.outbound.Outbound`) and duplicate suppression happen
here. It flushes replies produced by a step right away and yields to the event
loop every 512 envelopes or 2 ms, so timers, flushes and gRPC keep running
under load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from mabeam.dataplane import envelope as wire
from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane.chunking import Reassembler
from meshd.dataplane.config import DataPlaneConfig
from meshd.dataplane.dedup import DedupWindow
from meshd.dataplane.metrics import ChannelMetrics, PlaneCounters
from meshd.dataplane.outbound import Outbound
from meshd.dataplane.peers import Peer, PeerSet
from meshd.dataplane.scheduler import FairScheduler

_YIELD_EVERY = 512  # envelopes handled between yields to the loop in the receive pump

log = logging.getLogger(__name__)

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


class Receiver:
    """The receive loop of one data plane over its four channel ROUTERs (see the module docstring)."""

    def __init__(self, config: DataPlaneConfig, routers: dict[int, zmq.Socket], scheduler: FairScheduler,
                 peers: PeerSet, reassembler: Reassembler, dedup: DedupWindow, outbound: Outbound,
                 deliver: Callable[[pb.Envelope, bytes], None], metrics: dict[int, ChannelMetrics],
                 counters: PlaneCounters, clock: Callable[[], float]) -> None:
        self._routers = routers
        self._router_list = list(routers.items())
        self._scheduler = scheduler
        self._peers = peers
        self._detector = peers.detector
        self._reassembler = reassembler
        self._dedup = dedup
        self._outbound = outbound
        self._deliver = deliver
        self._metrics = metrics
        self._counters = counters
        self.clock = clock
        self._chunk_channel = wire.NORMAL if config.single_channel else wire.BULK
        self._pumping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Pump on ``loop`` (the FD callbacks are registered by the data plane)."""
        self._loop = loop

    def close(self) -> None:
        """Stop reading: a pump continuation still queued finds nothing to read."""
        self._router_list = []

    def on_readable(self) -> None:
        """Pump with a pass over every channel (continuations, the timer's safety net)."""
        if not self._pumping and self._router_list:
            self._pump()

    def on_channel_readable(self, ch: int) -> None:
        """Reader callback of one channel's FD: pump right here, no task wake-up in between.

        The first step looks at that channel only; every later step re-reads all four. A channel
        not looked at keeps its FD armed (its EVENTS was read when it last went empty), so its own
        callback follows in this loop turn: bench/dataplane.py call p50, three fewer EVENTS
        reads (~1 µs each warm, several times that on a freshly woken process) per wake-up.
        """
        if not self._pumping and self._router_list:
            # Not for the chunk channel: a 1 MiB chunk must not go before an urgent message whose
            # callback merely comes second in this loop turn.
            self._pump(ch if ch != self._chunk_channel else None)

    def _pump(self, first: int | None = None) -> None:
        """Drain ready channels in priority order (fair) until none is ready or the step budget is spent.

        Runs directly in the FD reader callback instead of waking a receive task through an
        ``asyncio.Event``: bench/dataplane.py's call round trip measured ~27 µs (p50) between the
        reader callback and the task's first recv, and ~47 µs from delivering a reply to the
        caller resuming, both mostly loop hops and ``asyncio.timeout`` bookkeeping of that task.
        Readiness of every channel is re-read before each step (EVENTS, ~1.5 µs each), so an
        urgent message is seen between two bulk chunks. When the only ready channel has just been
        drained empty the pump returns without another pass: every other socket's EVENTS was read
        in the pass before, which re-arms its FD, so anything arriving since wakes us again.
        After ``_YIELD_EVERY`` envelopes or 2 ms the rest is left to a ``call_soon`` so timers,
        flushes and gRPC keep running under load.
        """
        self._pumping = True
        outbound = self._outbound
        outbound.hold()
        try:
            routers = self._router_list
            scheduler = self._scheduler
            handled = 0
            started = time.monotonic()
            while True:
                if first is not None:
                    ready = [first] if self._routers[first].getsockopt(_EVENTS) & _POLLIN else []
                    first = None
                else:
                    ready = [ch for ch, sock in routers if sock.getsockopt(_EVENTS) & _POLLIN]
                if not ready:
                    break
                ch = scheduler.next_channel(ready)
                assert ch is not None
                taken, empty = self._drain(ch, self._routers[ch], scheduler.credit(ch))
                scheduler.consumed(ch, max(taken, 1))
                handled += taken
                if outbound.scheduled:
                    # Replies produced by this step go out now, not one loop turn later.
                    outbound.flush_all()
                if empty and len(ready) == 1:
                    break
                if handled >= _YIELD_EVERY or time.monotonic() - started > 0.002:
                    assert self._loop is not None
                    self._loop.call_soon(self.on_readable)
                    return
            if outbound.scheduled:
                outbound.flush_all()
        except Exception:  # a bug must not silence the receive side: log it and keep serving
            log.exception("data-plane receive step failed")
        finally:
            self._pumping = False
            outbound.held = False
            if outbound.scheduled:  # only after an exception: normal steps flush before returning
                assert self._loop is not None
                self._loop.call_soon(outbound.flush_all)

    def _drain(self, ch: int, sock: zmq.Socket, credit: int) -> tuple[int, bool]:
        """Take up to ``credit`` envelopes from one socket; returns (taken, socket now empty)."""
        taken = 0
        # Chunks land zero-copy and are copied once, into the reassembly buffer (STACK-NOTES: copy=False
        # pays above ~64 KiB, which is what the chunk channel carries).
        zero_copy = ch == self._chunk_channel
        recv = sock.recv
        get = sock.getsockopt
        check = False  # the pump just read POLLIN for this socket: the first recv needs no EVENTS
        while taken < credit:
            # EVENTS instead of recv-until-EAGAIN: pyzmq's Again exception costs ~5 µs, which the idle
            # re-check pass over four sockets paid on every wake-up (bench/dataplane.py call latency).
            # Plain-int options and flags, Frame.more instead of recv_multipart's RCVMORE getsockopt
            # per part: 2.1 vs 3.4 µs for a 3-frame message, and no pyzmq enum construction.
            if check and not get(_EVENTS) & _POLLIN:
                return taken, True
            check = True
            try:
                frame = recv(_NOBLOCK, copy=False)  # the peer's routing id
                parts: list[Any] = []
                while frame.more:
                    frame = recv(_NOBLOCK, copy=False)
                    parts.append(frame)
            except zmq.Again:
                return taken, True
            if zero_copy and parts:
                frames: list[Any] = [parts[0].bytes, *(f.buffer for f in parts[1:])]
            else:
                frames = [f.bytes for f in parts]
            taken += self._on_wire(ch, frames)
            if zero_copy:
                # One 1 MiB chunk per step: the pump re-reads the urgent channels' readiness between any
                # two chunks (bench/hol.py multi bulk p50; a chunk's copy is ~75 µs) while the bulk
                # quantum still bounds its share per round.
                return taken, False
        return taken, False

    def _on_wire(self, ch: int, frames: list[bytes]) -> int:
        metrics = self._metrics[ch]
        try:
            batch, payloads = wire.decode_frames(frames)
        except wire.FrameError as exc:
            self._counters.reject(metrics.name, exc.reason)
            metrics.drop("rejected_" + exc.reason)
            return 1
        origin = batch.sender_node
        peer = self._peers.by_node.get(origin)
        if peer is not None and self._detector.heard(origin, self.clock()) is not None:
            peer.down = False
        envelopes = batch.envelopes
        size = 0
        for env, payload in zip(envelopes, payloads, strict=True):
            size += len(payload)
            self._on_wire_envelope(env, payload, origin, peer, metrics.name)
        count = len(envelopes)
        self._counters.received += count
        # Counted here, published to prometheus by the timer every tick (ChannelMetrics.publish):
        # two labelled incs and a histogram observe per batch were ~1.5 µs hot, ~3x that on a
        # freshly woken process, on every call's round trip (bench/dataplane.py call p50).
        metrics.in_messages += count
        metrics.in_bytes += size
        sent_ns = envelopes[0].sent_unix_ns
        if sent_ns and len(metrics.latencies) < 4096:
            metrics.latencies.append(time.time_ns() - sent_ns)
        return count

    def _on_wire_envelope(self, env: pb.Envelope, payload: bytes, origin: str, peer: Peer | None,
                          socket: str) -> None:
        if env.kind == wire.SYSTEM:
            op = env.system_op
            if op == pb.SYSTEM_OP_ACK:
                if peer is not None:
                    for acked in env.acked_ids:
                        peer.unacked.pop(acked, None)
                    peer.space.set()
            elif op != pb.SYSTEM_OP_HEARTBEAT:  # the attach operations have no meaning between peers
                self._counters.reject(socket, "unknown_op")
            return
        flags = env.flags
        if flags & wire.FLAG_CHUNK:
            try:
                whole = self._reassembler.add((origin, env.id), env.chunk_index, env.chunk_count, env.total_size,
                                              payload, self.clock())
            except ValueError as exc:  # a chunk that does not fit its message: the whole message is refused
                self._counters.reject(socket, str(exc))
                return
            if whole is None:
                return
            payload = whole
            env.flags = flags = flags & ~wire.FLAG_CHUNK  # delivered whole: not a chunk any more
            for name in ("chunk_index", "chunk_count", "total_size"):
                env.ClearField(name)
        elif type(payload) is memoryview:
            payload = payload.tobytes()
        if flags & wire.FLAG_ACK:
            if peer is not None:
                self._outbound.ack_later(peer, env.id)
            if not self._dedup.check_and_add((origin, env.id)):
                self._counters.drops["duplicate"] += 1
                return
        self._deliver(env, payload)

