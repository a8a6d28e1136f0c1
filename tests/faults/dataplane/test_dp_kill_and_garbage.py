"""Peers that die, and bytes that are not a data-plane message: the plane keeps serving."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import zmq
import zmq.asyncio

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.errors import Unavailable
from mabeam.dataplane.message import AgentRef
from mabeam.dev.testing import async_wait_until
from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane import DataPlane, DataPlaneConfig, InMemoryRegistry
from meshd.dataplane.testing import PeerProcess, started_planes


async def test_kill_9_peer_fails_outstanding_calls_within_2s(peer_processes: list[PeerProcess]) -> None:
    # A peer process that never replies is killed with -9 while five calls wait on it.
    victim = PeerProcess("victim", role="silent")
    peer_processes.append(victim)
    plane = DataPlane("caller", DataPlaneConfig(), InMemoryRegistry())
    await plane.start()
    try:
        plane.peer_up("victim", victim.addresses)
        victim.command(peer_up={"node_id": "caller", "addresses": plane.addresses})
        target = AgentRef("default", "victim", "svc")
        calls = [asyncio.create_task(plane.call(None, target, b"x", timeout=30)) for _ in range(5)]
        stats = await asyncio.to_thread(victim.stats)
        while stats["calls"] < 5:
            stats = await asyncio.to_thread(victim.stats)
        killed = time.monotonic()
        victim.kill()
        results = await asyncio.gather(*calls, return_exceptions=True)
        elapsed = time.monotonic() - killed
        assert all(isinstance(r, Unavailable) for r in results), results
        assert elapsed < 2.0, elapsed
        # New calls to the dead node fail at once too.
        with pytest.raises(Unavailable):
            await plane.call(None, target, b"x", timeout=30)
    finally:
        await plane.stop()


async def test_peer_down_from_membership_fails_pending_calls_at_once() -> None:
    a, b = await started_planes(2)
    try:
        b.open_endpoint("silent", handler=lambda m: None)
        call = asyncio.create_task(a.call(None, AgentRef("default", "n1", "silent"), b"x", timeout=30))
        await async_wait_until(lambda: b.received >= 1, 3, what="call arrived")
        started = time.monotonic()
        a.peer_down("n1")
        with pytest.raises(Unavailable):
            await call
        assert time.monotonic() - started < 1.0  # at once, not at the call's 30 s timeout (slack: a starved machine)
    finally:
        await a.stop()
        await b.stop()


def _env(**fields: object) -> bytes:
    base = {"version": 1, "id": 1, "kind": wire.CAST, "channel": wire.NORMAL}
    base.update(fields)
    return pb.Envelope(**base).SerializeToString()  # type: ignore[arg-type]


GARBAGE: list[tuple[list[bytes], str]] = [
    ([b"one frame"], "frame_count"),
    ([os.urandom(40), os.urandom(10)], "bad_header"),
    ([b"\x0a\xff\xff\xff\xff\xff\xff", b""], "bad_header"),
    ([pb.Batch(version=7).SerializeToString(), b""], "version"),
    ([wire.encode_batch(wire.batch_prefix("x"), [_env(version=3)]), b""], "version"),
    ([wire.encode_batch(wire.batch_prefix("x"), [_env(), _env()]), b"only one"], "frame_count"),
    ([wire.encode_batch(wire.batch_prefix("x"), [_env()]), b"a", b"extra"], "frame_count"),
]


async def test_garbage_into_every_socket_is_counted_and_plane_keeps_serving() -> None:
    a, b = await started_planes(2)
    ctx = zmq.asyncio.Context()
    try:
        echo = b.open_endpoint("echo", handler=lambda m: echo.reply(m, m.payload))
        targets = list(b.addresses.values()) + [b.attach_address]
        # Raw random bytes at the TCP level (ZMTP handshake fails inside libzmq, never reaches us).
        for address in b.addresses.values():
            host, port = address.removeprefix("tcp://").rsplit(":", 1)
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(os.urandom(4096))
            await writer.drain()
            writer.close()
        # Well-framed ZeroMQ messages that are not valid batches, including truncated multiparts.
        for address in targets:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 2000)  # close() must not discard what is still queued
            sock.connect(address)
            for frames, _ in GARBAGE:
                await sock.send_multipart(frames)
            sock.close()
        expected: dict[str, int] = {}
        for _, reason in GARBAGE:
            expected[reason] = expected.get(reason, 0) + 4
            expected["attach_" + reason] = expected.get("attach_" + reason, 0) + 1
        await async_wait_until(lambda: all(b.rejected.get(k, 0) >= v for k, v in expected.items()), 5,
                         what=f"rejects counted (have {dict(b.rejected)})")
        # Attach got exactly the framed garbage; the channels may count more, because libzmq's ZMTP/1.0
        # compatibility can parse raw random bytes into frames that then reach (and fail) our validation.
        assert {k: b.rejected[k] for k in expected if k.startswith("attach_")} == {
            k: v for k, v in expected.items() if k.startswith("attach_")}
        # Still serving on every channel.
        for channel in ("control", "high", "normal", "bulk"):
            reply = await a.call(None, echo.ref, channel.encode(), channel=channel, timeout=3)
            assert reply.payload == channel.encode()
    finally:
        ctx.term()
        await a.stop()
        await b.stop()
