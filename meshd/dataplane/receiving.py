"""The receiving half of :class:`meshd.dataplane.plane.DataPlane`: the fair, non-blocking receive loop.

One task reads the four channel ROUTERs. Before every step it re-reads each
socket's readiness (``EVENTS``), lets :class:`FairScheduler` pick the channel,
drains up to that channel's credit with ``NOBLOCK`` (no await per message),
validates each batch once and dispatches its envelopes synchronously. It
flushes replies produced by a step right away and yields to the event loop
every 512 envelopes or 2 ms, so timers, flushes and gRPC keep running under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import zmq

from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane import envelope as wire

if TYPE_CHECKING:
    from meshd.dataplane.peers import Peer

_YIELD_EVERY = 512  # envelopes handled between yields to the loop in the receive task


class ReceiveSide:
    """Mixin holding the receive loop; the attributes it uses are set by ``DataPlane.__init__``."""

    _readiness: Any
    _routers: dict[int, zmq.Socket]
    _scheduler: Any
    _flush_scheduled: bool
    _chunk_channel: int
    _metrics: dict[int, Any]
    _peers: dict[str, Any]
    _detector: Any
    _reassembler: Any
    _dedup: Any
    rejected: Any
    drops: Any
    received: int
    clock: Any

    def _flush_all(self) -> None:
        raise NotImplementedError

    def _schedule_flush(self) -> None:
        raise NotImplementedError

    def _deliver(self, env: pb.Envelope, payload: bytes) -> None:
        raise NotImplementedError

    async def _receive_loop(self) -> None:
        assert self._readiness is not None
        event = self._readiness.event
        routers = list(self._routers.items())
        scheduler = self._scheduler
        handled = 0
        last_yield = time.monotonic()
        while True:
            # Readiness of every channel is re-read before each step (EVENTS, ~1 µs each), so an urgent
            # message is seen between two bulk chunks instead of after the bulk socket runs dry.
            ready = [ch for ch, sock in routers if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN]
            if not ready:
                if self._flush_scheduled:
                    # Replies produced by this pass go out now, not one loop turn later.
                    self._flush_all()
                event.clear()
                ready = [ch for ch, sock in routers if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN]
                if not ready:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.25):
                            await event.wait()
                    handled = 0
                    last_yield = time.monotonic()
                    continue
            ch = scheduler.next_channel(ready)
            assert ch is not None
            taken, _ = self._drain(ch, self._routers[ch], scheduler.credit(ch))
            scheduler.consumed(ch, max(taken, 1))
            handled += taken
            if self._flush_scheduled:
                self._flush_all()
            if handled >= _YIELD_EVERY or time.monotonic() - last_yield > 0.002:
                handled = 0
                await asyncio.sleep(0)
                last_yield = time.monotonic()

    def _drain(self, ch: int, sock: zmq.Socket, credit: int) -> tuple[int, bool]:
        taken = 0
        # Chunks land zero-copy and are copied once, into the reassembly buffer (STACK-NOTES: copy=False
        # pays above ~64 KiB, which is what the chunk channel carries).
        zero_copy = ch == self._chunk_channel
        while taken < credit:
            # EVENTS instead of recv-until-EAGAIN: pyzmq's Again exception costs ~5 µs, which the idle
            # re-check pass over four sockets paid on every wake-up (bench/dataplane.py call latency).
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return taken, True
            try:
                if zero_copy:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    frames: list[Any] = [parts[1].bytes, *(p.buffer for p in parts[2:])]
                else:
                    frames = sock.recv_multipart(zmq.NOBLOCK)[1:]
            except zmq.Again:
                return taken, True
            except IndexError:
                self.rejected["frame_count"] += 1
                taken += 1
                continue
            taken += self._on_wire(ch, frames)
        return taken, False

    def _on_wire(self, ch: int, frames: list[bytes]) -> int:
        metrics = self._metrics[ch]
        try:
            batch, payloads = wire.decode_frames(frames)
        except wire.FrameError as exc:
            self.rejected[exc.reason] += 1
            metrics.drop("rejected_" + exc.reason)
            return 1
        origin = batch.sender_node
        peer = self._peers.get(origin)
        if peer is not None and self._detector.heard(origin, self.clock()) is not None:
            peer.down = False
        envelopes = batch.envelopes
        size = 0
        for env, payload in zip(envelopes, payloads, strict=True):
            size += len(payload)
            self._on_wire_envelope(env, payload, origin, peer)
        count = len(envelopes)
        self.received += count
        metrics.messages_in.inc(count)
        metrics.bytes_in.inc(size)
        sent_ns = envelopes[0].sent_unix_ns
        if sent_ns:
            metrics.latency.observe(max(0.0, (time.time_ns() - sent_ns) / 1e9))
        return count

    def _on_wire_envelope(self, env: pb.Envelope, payload: bytes, origin: str, peer: Peer | None) -> None:
        if env.kind == wire.SYSTEM:
            if env.system_op == pb.SYSTEM_OP_ACK and peer is not None:
                for acked in env.acked_ids:
                    peer.unacked.pop(acked, None)
                peer.space.set()
            return
        flags = env.flags
        if flags & wire.FLAG_CHUNK:
            try:
                whole = self._reassembler.add((origin, env.id), env.chunk_index, env.chunk_count, env.total_size,
                                              payload, self.clock())
            except ValueError as exc:
                self.drops[str(exc)] += 1
                return
            if whole is None:
                return
            payload = whole
        elif type(payload) is memoryview:
            payload = payload.tobytes()
        if flags & wire.FLAG_ACK:
            if peer is not None:
                peer.acks_due.append(env.id)
                self._schedule_flush()
            if not self._dedup.check_and_add((origin, env.id)):
                self.drops["duplicate"] += 1
                return
        self._deliver(env, payload)

