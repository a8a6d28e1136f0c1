"""The ZeroMQ boundary: contexts, sockets, socket options, readiness waiting and CURVE auth.

Everything that configures a ZeroMQ socket lives here, so the data plane's
policy code (``plane.py``) never sets a socket option itself.

* One ``zmq.Context`` (one I/O thread) per channel by default: with one shared
  context a bulk transfer delays urgent sockets (STACK-NOTES: urgent median
  under bulk ~725 µs shared vs ~190 µs separate).
* Inbound: a ROUTER per channel bound on its own TCP port. Outbound: a DEALER
  per (peer, channel) connected to the peer's ROUTER, routing id = our node id.
* Sockets are plain (synchronous) pyzmq sockets drained with ``NOBLOCK`` until
  ``EAGAIN``; readiness comes from the socket's edge-triggered ``FD`` through
  ``loop.add_reader`` (STACK-NOTES: ~300k msg/s vs ~65k with one await each).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio
import zmq.utils.z85

from mabeam.dataplane import envelope as wire
from mabeam.dataplane import stallprobe
from mabeam.dataplane.zmqio import SCHED_IDLE, sched_idle_ok, send_frames

log = logging.getLogger(__name__)


class ZapHandler:
    """A ZAP handler (ZeroMQ RFC 27) for CURVE on one context, answering each request in its own task.

    pyzmq's authenticators read requests on a REP socket, one at a time: a handshake held there (waiting
    for membership to announce a key) would stall every other handshake of the context. This one reads
    on a ROUTER and answers in per-request tasks that it owns and cancels at :meth:`stop`.
    """

    def __init__(self, context: zmq.Context, allow: Callable[[str, str], Awaitable[bool]], label: str) -> None:
        self._allow = allow
        self._label = label
        self._context = zmq.asyncio.Context.shadow(context)
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind("inproc://zeromq.zap.01")
        self._requests: set[asyncio.Task[None]] = set()
        self._reader = asyncio.ensure_future(self._serve())

    async def _serve(self) -> None:
        while True:
            frames = await self._socket.recv_multipart()
            task = asyncio.ensure_future(self._answer(frames))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    async def _answer(self, frames: list[bytes]) -> None:
        # [routing id, empty delimiter, version, request id, domain, address, identity, mechanism, credentials...]
        if len(frames) < 4 or frames[1]:
            return  # not a ZAP request: nothing to answer to
        envelope, version, request_id, body = frames[:2], frames[2], frames[3], frames[4:]
        allowed = False
        if version == b"1.0" and len(body) == 5 and body[3] == b"CURVE" and len(body[4]) == 32:
            allowed = await self._allow(zmq.utils.z85.encode(body[4]).decode("ascii"), self._label)
        status, text = (b"200", b"OK") if allowed else (b"400", b"Unknown key")
        await self._socket.send_multipart([*envelope, b"1.0", request_id, status, text, b"", b""])

    def stop(self) -> None:
        """Cancel the reader and every pending answer (the handshakes waiting on them fail) and close."""
        self._reader.cancel()
        for task in list(self._requests):
            task.cancel()
        self._requests.clear()
        self._socket.close(linger=0)


class ContextSet:
    """The ZeroMQ contexts of one data plane: one per channel (or one shared), plus one for attach."""

    def __init__(self, channels: tuple[int, ...], per_channel: bool, idle_channels: tuple[int, ...] = ()) -> None:
        shared = None if per_channel else zmq.Context(io_threads=1)
        self.by_channel: dict[int, zmq.Context] = {
            ch: (shared if shared is not None else zmq.Context(io_threads=1)) for ch in channels
        }
        if per_channel:
            for ch in idle_channels:
                # SCHED_IDLE I/O thread (allowed unprivileged; set before the thread starts, i.e. before
                # the first socket): on a busy host it runs only when no normal thread wants the CPU,
                # so the urgent channels' threads preempt the bulk transfer. See DataPlaneConfig.
                self.by_channel[ch].set(zmq.THREAD_SCHED_POLICY, SCHED_IDLE)
        self.attach = zmq.Context(io_threads=1)
        # The attach bulk lanes' socket has its own context: its I/O thread moves 64 MiB messages over ipc and
        # page-faults every fresh receive buffer; at normal priority it (with the attach thread it used to share)
        # was the largest CPU user under bulk and queued the urgent path's threads for a core (bench/hol.py).
        self.attach_lane = zmq.Context(io_threads=1)
        if per_channel and idle_channels:
            self.attach_lane.set(zmq.THREAD_SCHED_POLICY, SCHED_IDLE)
        self._all: list[zmq.Context] = list({id(c): c for c in [*self.by_channel.values(), self.attach,
                                                                 self.attach_lane]}.values())
        self.authenticators: list[ZapHandler] = []
        # Benchmarks only (MABEAM_STALL_PROBE): the contexts live exactly as long as the running plane.
        self.probe = stallprobe.start_from_env("dataplane")

    def enable_curve_auth(self, allow: Callable[[str, str], Awaitable[bool]]) -> None:
        """Start a ZAP handler in every channel context that accepts CURVE keys for which ``allow`` is true.

        ``allow(key, channel)`` may take its time (the data plane holds a key it does not know yet until
        membership announces it); one held handshake delays no other (:class:`ZapHandler`). ``channel`` is
        the name of the channel the context serves, "all" when the channels share one context.
        """
        seen: set[int] = set()
        shared = len({id(ctx) for ctx in self.by_channel.values()}) == 1 and len(self.by_channel) > 1
        for ch, ctx in self.by_channel.items():
            if id(ctx) in seen:
                continue
            seen.add(id(ctx))
            self.authenticators.append(ZapHandler(ctx, allow, "all" if shared else wire.channel_name(ch)))

    def terminate(self) -> None:
        """Stop authenticators and terminate every context (all sockets must be closed first)."""
        if self.probe is not None:
            self.probe.stop()
            self.probe = None
        for auth in self.authenticators:
            auth.stop()
        self.authenticators.clear()
        for ctx in self._all:
            ctx.term()


def make_router(ctx: zmq.Context, *, rcvhwm: int, sndhwm: int, max_msg: int,
                curve_keys: tuple[bytes, bytes] | None = None, mandatory: bool = False) -> zmq.Socket:
    """An inbound ROUTER (not yet bound); a CURVE server when ``curve_keys`` = (public, secret)."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg)
    if mandatory:
        # Without it a ROUTER silently drops messages to a slow or gone peer (STACK-NOTES).
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # A peer that comes back from a partition dials again with the same routing id (its node id) while
    # its old connection may still look alive here (a ROUTER that only receives never notices a dead
    # one): without handover the ROUTER refuses the new connection for as long as the old one lingers,
    # and that peer stays silent (found on the netns test bed). The new connection takes the id over.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    if curve_keys is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve_keys[0])
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve_keys[1])
    return sock


def bind_router(sock: zmq.Socket, host: str, port: int) -> str:
    """Bind to tcp://host:port (port 0: ephemeral) and return the concrete endpoint."""
    if port:
        sock.bind(f"tcp://{host}:{port}")
    else:
        sock.bind(f"tcp://{host}:0")
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def make_dealer(ctx: zmq.Context, identity: bytes, address: str, *, sndhwm: int,
                curve: tuple[bytes, bytes, bytes] | None = None) -> zmq.Socket:
    """An outbound DEALER connected to ``address``; CURVE client when ``curve`` = (server, public, secret)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.RCVHWM, 16)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
    # After a partition (or a paused host) the old TCP connection sits in retransmission backoff for many
    # seconds past the heal, and so does a connect whose SYNs were dropped: ZMTP heartbeats drop a
    # connection that heard nothing for HEARTBEAT_TIMEOUT, and a bounded connect retries every
    # RECONNECT_IVL, so the channel is back within about a second of the heal (found on the netns test bed).
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, 1000)
    if curve is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0])
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1])
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2])
    sock.connect(address)
    return sock


class Readiness:
    """Runs a callback (or wakes a task) when any of a set of ZeroMQ sockets may have work.

    The FD of a ZeroMQ socket signals pending commands, not messages: after it fires the reader
    must read ``EVENTS`` until ``POLLIN`` is clear, otherwise it may never fire again.
    """

    def __init__(self, callback: Callable[[], object] | None = None) -> None:
        self.event = asyncio.Event()
        self._callback = callback if callback is not None else self.event.set
        self._fds: list[int] = []
        self._loop = asyncio.get_running_loop()

    def watch(self, sock: zmq.Socket, *args: object) -> None:
        """Call the callback (default: set :attr:`event`) with ``args`` whenever ``sock``'s FD signals."""
        fd = sock.getsockopt(zmq.FD)
        self._loop.add_reader(fd, self._callback, *args)
        self._fds.append(fd)

    def close(self) -> None:
        """Stop watching every socket."""
        for fd in self._fds:
            self._loop.remove_reader(fd)
        self._fds.clear()


async def wait_writable(sock: zmq.Socket, timeout: float = 0.05) -> None:
    """Wait until ``sock`` accepts a message (checks ``EVENTS``; re-checks every ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    fd = sock.getsockopt(zmq.FD)
    loop.add_reader(fd, event.set)
    try:
        while not sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
            event.clear()
            try:
                async with asyncio.timeout(timeout):  # not wait_for: 3.11's can swallow a cancel (see session.py)
                    await event.wait()
            except TimeoutError:
                pass
    finally:
        loop.remove_reader(fd)


__all__ = ["SCHED_IDLE", "ContextSet", "Readiness", "bind_router", "make_dealer", "make_router", "sched_idle_ok",
           "send_frames", "wait_writable"]
