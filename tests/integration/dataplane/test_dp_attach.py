"""Local attach: processes reach meshd over ipc:// (or loopback TCP) and send through it."""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest

from meshd.dataplane import DataPlane, DataPlaneConfig, DataPlaneError, InMemoryRegistry, NotFound
from meshd.dataplane.attach import AttachedEndpoint
from meshd.dataplane.testing import wait_until

Pair = tuple[DataPlane, DataPlane]


async def test_attached_endpoints_talk_locally_and_across_nodes(pair: Pair, registry: InMemoryRegistry) -> None:
    a, b = pair
    assert a.attach_address.startswith("ipc://")
    alice = await AttachedEndpoint.connect(a.attach_address, "alice")
    bob = await AttachedEndpoint.connect(a.attach_address, "bob")
    carol = await AttachedEndpoint.connect(b.attach_address, "carol")
    try:
        assert alice.ref.node_id == "n0"
        await bob.register_name("bob")
        await carol.register_name("carol")
        # Same node: alice -> bob does not touch the channels.
        sent_before = a.sent
        await alice.send("bob", b"hi bob")
        got = await bob.receive(timeout=2)
        assert got.payload == b"hi bob" and got.sender == alice.ref
        assert a.sent == sent_before
        # Across nodes: alice calls carol.
        call = alice.call("carol", b"q", timeout=3)
        task = asyncio.create_task(call)
        request = await carol.receive(timeout=2)
        await carol.reply(request, b"answer")
        assert (await task).payload == b"answer"
        # Unknown name: a call fails with NOT_FOUND; a cast bounces as an ERROR message.
        with pytest.raises(NotFound):
            await alice.call("nobody", b"x", timeout=2)
        await alice.send("nobody", b"x")
        assert isinstance((await alice.receive(timeout=2)).error, NotFound)
        # Names are unique.
        with pytest.raises(DataPlaneError) as info:
            await alice.register_name("bob")
        assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
    finally:
        await alice.close()
        await bob.close()
        await carol.close()
    # Detach removed the names.
    await wait_until(lambda: registry.lookup("default", "bob") is None, 2, "name removed on detach")


async def test_in_process_endpoint_reaches_attached_mailbox_limit(pair: Pair) -> None:
    a, _ = pair
    slow = await AttachedEndpoint.connect(a.attach_address, "slow", max_pending=3)
    tx = a.open_endpoint("tx")
    try:
        for i in range(5):
            await tx.send(slow.ref, str(i).encode())
        errors = [await tx.receive(timeout=2) for _ in range(2)]
        assert all(m.error is not None and m.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED for m in errors)
    finally:
        await slow.close()


@pytest.mark.skipif(sys.platform == "win32", reason="tcp fallback is the only option there anyway")
async def test_tcp_loopback_fallback() -> None:
    plane = DataPlane("solo", DataPlaneConfig(attach_tcp=True))
    await plane.start()
    try:
        assert plane.attach_address.startswith("tcp://127.0.0.1:")
        one = await AttachedEndpoint.connect(plane.attach_address, "one")
        two = await AttachedEndpoint.connect(plane.attach_address, "two")
        await one.send(two.ref, b"over tcp")
        assert (await two.receive(timeout=2)).payload == b"over tcp"
        await one.close()
        await two.close()
    finally:
        await plane.stop()
