"""Local attach: processes reach meshd over ipc:// (or loopback TCP) and send through it."""

from __future__ import annotations

import asyncio
import sys
import time

import grpc
import pytest

from mabeam.dataplane.attach import AttachedEndpoint
from mabeam.dataplane.errors import DataPlaneError, Detached, NotFound
from mabeam.dev.testing import async_wait_until
from meshd.dataplane import DataPlane, DataPlaneConfig, InMemoryRegistry

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
    await async_wait_until(lambda: registry.lookup("default", "bob") is None, 5, what="name removed on detach")


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


async def test_meshd_overrides_what_an_attached_process_claims(pair: Pair) -> None:
    """A process speaking the wire format directly cannot spoof sender, tenant or flags across nodes."""
    import zmq
    import zmq.asyncio

    from mabeam.dataplane import envelope as wire
    from mabeam.v1 import dataplane_pb2 as pb

    a, b = pair
    rx = b.open_endpoint("rx")
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(a.attach_address)
    prefix = wire.batch_prefix("")

    async def send(env: pb.Envelope, payload: bytes) -> None:
        await sock.send_multipart([wire.encode_batch(prefix, [env.SerializeToString()]), payload])

    try:
        attach = pb.Envelope(version=1, id=1, kind=wire.SYSTEM, channel=wire.CONTROL, system_op=pb.SYSTEM_OP_ATTACH)
        attach.sender.agent_id = "mallory"
        await send(attach, b"16")
        result = pb.Batch.FromString((await asyncio.wait_for(sock.recv_multipart(), 5))[0]).envelopes[0]
        assert result.error_code == 0
        me = result.to_agent
        spoofed = pb.Envelope(version=1, id=2, kind=wire.CAST, channel=wire.HIGH, tenant="evil",
                              flags=wire.FLAG_CHUNK, chunk_index=0, chunk_count=1, total_size=5)
        spoofed.sender.tenant, spoofed.sender.node_id, spoofed.sender.agent_id = "evil", "n9", "root"
        spoofed.to_agent.node_id, spoofed.to_agent.agent_id = b.node_id, "rx"
        await send(spoofed, b"hello")
        got = await rx.receive(timeout=5)
        assert got.payload == b"hello"
        assert (got.sender.tenant, got.sender.node_id, got.sender.agent_id) == ("default", a.node_id, me.agent_id)
        assert got.envelope.tenant == "default" and got.envelope.flags == 0 and got.channel == wire.HIGH
    finally:
        sock.close(linger=0)
        ctx.term()


async def test_casts_to_a_vanished_attached_process_bounce_not_found(pair: Pair) -> None:
    """A process that disappears without detaching: meshd notices at the next send and bounces NOT_FOUND."""
    a, b = pair
    alice = await AttachedEndpoint.connect(a.attach_address, "alice")
    ghost = await AttachedEndpoint.connect(b.attach_address, "ghost")
    try:
        await alice.send(ghost.ref, b"before")
        assert (await ghost.receive(timeout=2)).payload == b"before"
        # Vanish without DETACH: the sockets close, the process "died".
        ghost.closed = True
        ghost._sock.close(linger=0)
        ghost._lane.close(linger=0)

        async def bounced() -> bool:
            await alice.send(ghost.ref, b"after")
            try:
                message = await alice.receive(timeout=1)
            except TimeoutError:
                return False  # sent into the connection before meshd saw it close: lost (at-most-once)
            return isinstance(message.error, NotFound)

        await async_wait_until(bounced, 5, interval=0, what="a NOT_FOUND bounce")
        assert b.attach is not None and ghost.ref.agent_id not in {
            m.ref.agent_id for m in b.attach.by_routing_id.values()}
    finally:
        await alice.close()
        for fd in ghost._fds:
            asyncio.get_running_loop().remove_reader(fd)
        ghost._heartbeat.cancel()
        ghost._ctx.term()
        ghost._lane_ctx.term()


async def test_a_detached_endpoint_fails_fast_then_reattaches_with_its_names(pair: Pair, registry: InMemoryRegistry,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # meshd detaches an endpoint (as it does one that went silent). While it cannot re-attach, its sends and
    # calls fail at once with UNAVAILABLE/DETACHED (not the call timeout, never an assertion); then it
    # re-attaches by itself and registers its names and groups again, except a name taken meanwhile, which it
    # reports to on_name_lost.
    a, b = pair
    healer = await AttachedEndpoint.connect(a.attach_address, "healer")
    other = await AttachedEndpoint.connect(b.attach_address, "other")
    lost: list[tuple[str, str]] = []
    healer.on_name_lost = lambda name, why: lost.append((name, why))
    server = a.attach
    assert server is not None
    try:
        await other.register_name("other")
        for name in ("healer", "contested"):
            await healer.register_name(name)
        await healer.join_group("healers")
        refusing = [True]
        attach = server._attach
        monkeypatch.setattr(server, "_attach", lambda *args: None if refusing[0] else attach(*args))
        mailbox = next(m for m in server.by_routing_id.values() if m.ref.agent_id == "healer")
        mailbox.last_seen = 0.0
        server._expire(server._tg)  # what the expiry loop does with a silent endpoint
        await async_wait_until(lambda: not healer.attached, 10, what="the endpoint learns it was detached")
        await async_wait_until(lambda: registry.lookup("default", "healer") is None, 10, what="its names dropped")
        await other.register_name("contested")  # taken while the healer is away

        started = time.monotonic()
        with pytest.raises(Detached) as raised:
            await healer.call("other", b"q", timeout=5)
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE and raised.value.reason == "DETACHED"
        with pytest.raises(Detached):
            healer.send_nowait("other", b"cast")
        assert time.monotonic() - started < 2.0  # failed fast, not after the call's 5 s (slack: a starved machine)

        refusing[0] = False
        await async_wait_until(lambda: healer.attached, 10, what="re-attached by itself")
        await async_wait_until(lambda: registry.lookup("default", "healer") == healer.ref, 5,
                               what="name registered again")
        await async_wait_until(lambda: healer.ref in registry.group_members("default", "healers"), 5,
                               what="group joined again")
        await async_wait_until(lambda: lost, 5, what="the taken name reported")
        assert [name for name, _ in lost] == ["contested"] and "contested" not in healer.names
        assert registry.lookup("default", "contested") == other.ref
        assert dict(healer.events) == {"detached": 1, "reattached": 1, "names_lost": 1}
        call = asyncio.create_task(healer.call("other", b"q", timeout=3))  # and it works again
        request = await other.receive(timeout=3)
        await other.reply(request, b"a")
        assert (await call).payload == b"a"
    finally:
        await healer.close()
        await other.close()


async def test_meshd_tells_an_endpoint_whose_name_another_owner_took(pair: Pair) -> None:
    # After this node's lease lapsed, re-registration found the name taken: meshd says so to the endpoint.
    a, _ = pair
    owner = await AttachedEndpoint.connect(a.attach_address, "owner")
    lost: list[tuple[str, str]] = []
    owner.on_name_lost = lambda name, why: lost.append((name, why))
    try:
        await owner.register_name("prize")
        assert a.attach is not None and a.attach.name_lost("default", "prize", "owner", "held by agent x")
        await async_wait_until(lambda: lost, 10, what="owner told")
        assert lost == [("prize", "held by agent x")] and "prize" not in owner.names
        assert owner.events["names_lost"] == 1
        assert not a.attach.name_lost("default", "prize", "nobody-attached", "x")
    finally:
        await owner.close()


async def test_a_registration_meshd_refuses_as_not_attached_completes_after_the_reattach(
        pair: Pair, registry: InMemoryRegistry) -> None:
    # meshd forgot the endpoint (restarted, or detached it) before the endpoint heard of it: its next
    # registration is refused "not attached". The endpoint re-attaches and the registration still succeeds,
    # rather than failing a caller that had no way to know.
    a, _ = pair
    endpoint = await AttachedEndpoint.connect(a.attach_address, "unaware")
    server = a.attach
    assert server is not None
    try:
        mailbox = next(m for m in server.by_routing_id.values() if m.ref.agent_id == "unaware")
        server._detach(mailbox, server._tg)  # silently: no DETACHED notice reaches the endpoint first
        assert endpoint.attached
        await endpoint.register_name("unaware-name")
        assert registry.lookup("default", "unaware-name") == endpoint.ref and endpoint.attached
        assert endpoint.events["detached"] == 1 and endpoint.events["reattached"] == 1
    finally:
        await endpoint.close()


async def test_a_process_that_vanished_gives_its_agent_id_to_its_successor_at_once(pair: Pair) -> None:
    # agentd killed -9 and started again: the new process attaches with the same agent id while meshd still
    # holds the old attachment (it would expire in 5 s). meshd sees the old connection is gone and lets the
    # new one in, instead of answering ALREADY_EXISTS until the expiry; a live holder still gets ALREADY_EXISTS.
    a, _ = pair
    first = await AttachedEndpoint.connect(a.attach_address, "phoenix")
    first.closed = True  # vanish without DETACH, as a killed process does
    first._sock.close(linger=0)
    first._lane.close(linger=0)
    successor: list[AttachedEndpoint] = []

    async def attached() -> bool:
        successor.append(await AttachedEndpoint.connect(a.attach_address, "phoenix", timeout=5.0))
        return True

    try:
        # Generous bounds: a refusal comes back at once, so they only matter on a starved machine.
        await async_wait_until(attached, 15, interval=0.05, what="the successor attached")
        await successor[0].register_name("phoenix")
        with pytest.raises(DataPlaneError) as info:  # the successor is alive: a third one is refused
            await AttachedEndpoint.connect(a.attach_address, "phoenix", timeout=10.0)
        assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
    finally:
        for endpoint in successor:
            await endpoint.close()
        for fd in first._fds:
            asyncio.get_running_loop().remove_reader(fd)
        first._heartbeat.cancel()
        first._ctx.term()
        first._lane_ctx.term()
