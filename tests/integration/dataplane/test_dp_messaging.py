"""Send, call and routing semantics between two real data planes over loopback TCP."""

from __future__ import annotations

import asyncio
import time

import pytest

from mabeam.dataplane.errors import DeadlineExceeded, MessageTooLarge, NotFound, ResourceExhausted
from mabeam.dataplane.message import AgentRef, Group, Message
from mabeam.dev.testing import async_wait_until
from meshd.dataplane import DataPlane, InMemoryRegistry

Pair = tuple[DataPlane, DataPlane]


async def test_fifo_per_sender_receiver_channel(pair: Pair) -> None:
    # 2,000 casts on each channel arrive in send order per channel.
    a, b = pair
    got: dict[int, list[int]] = {}
    b.open_endpoint("rx", handler=lambda m: got.setdefault(m.channel, []).append(int(m.payload)))
    src = a.open_endpoint("tx")
    n = 2000
    for i in range(n):
        for channel in ("control", "high", "normal", "bulk"):
            await src.send(AgentRef("default", "n1", "rx"), str(i).encode(), channel=channel)
    await async_wait_until(lambda: sum(len(v) for v in got.values()) == 4 * n, 10, what="all messages")
    for seq in got.values():
        assert seq == list(range(n))


async def test_call_reply_and_remote_node_in_reply(pair: Pair) -> None:
    a, b = pair
    server = b.open_endpoint("srv", handler=lambda m: server.reply(m, m.payload.upper()))
    reply = await a.open_endpoint("c").call(server.ref, b"ping", timeout=2)
    assert reply.payload == b"PING"
    assert reply.sender == server.ref


async def test_deadline_exceeded_and_late_reply_dropped(pair: Pair) -> None:
    # The callee answers after the deadline: caller gets DEADLINE_EXCEEDED, the reply is counted as late.
    a, b = pair
    held: list[Message] = []
    server = b.open_endpoint("slow", handler=held.append)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await a.call(None, server.ref, b"x", timeout=0.2)
    assert 0.18 <= time.monotonic() - started < 3.0  # the deadline, with slack for a starved machine
    server.reply(held[0], b"too late")
    await async_wait_until(lambda: a.drops.get("late_reply", 0) == 1, 3, what="late reply counted")


async def test_not_found_for_unknown_name_agent_and_group(pair: Pair) -> None:
    a, b = pair
    ep = a.open_endpoint("me")
    with pytest.raises(NotFound):
        await ep.send("nobody", b"x")
    with pytest.raises(NotFound):
        await ep.send(Group("empty"), b"x")
    # Unknown agent on the remote node: a call fails with NOT_FOUND from the receiver...
    with pytest.raises(NotFound):
        await ep.call(AgentRef("default", "n1", "ghost"), b"x", timeout=2)
    # ...and a cast comes back to the sender's mailbox as an ERROR message.
    await ep.send(AgentRef("default", "n1", "ghost"), b"x")
    bounced = await ep.receive(timeout=2)
    assert isinstance(bounced.error, NotFound)


async def test_resource_exhausted_when_mailbox_full(pair: Pair) -> None:
    a, b = pair
    rx = b.open_endpoint("small", max_pending=5)
    tx = a.open_endpoint("tx")
    for i in range(8):
        await tx.send(rx.ref, str(i).encode())
    errors = [await tx.receive(timeout=2) for _ in range(3)]
    assert all(isinstance(m.error, ResourceExhausted) for m in errors)
    assert [m.payload for m in [rx.receive_nowait() for _ in range(5)]] == [b"0", b"1", b"2", b"3", b"4"]
    # A call into a full mailbox fails with the same code.
    for i in range(5):
        await tx.send(rx.ref, str(i).encode())
    await async_wait_until(lambda: rx.pending() == 5, 5, what="mailbox full")
    with pytest.raises(ResourceExhausted):
        await tx.call(rx.ref, b"c", timeout=2)


async def test_oversize_is_a_typed_error_and_large_messages_are_chunked(pair: Pair) -> None:
    a, b = pair
    a.config.max_message_size = 8 << 20
    rx = b.open_endpoint("big")
    with pytest.raises(MessageTooLarge):
        await a.cast(None, rx.ref, b"x" * ((8 << 20) + 1))
    payload = bytes(range(256)) * (5 * 4096 + 17)  # ~5 MiB: six 1 MiB chunks
    await a.cast(None, rx.ref, payload, channel="normal")
    got = await rx.receive(timeout=5)
    assert got.payload == payload
    assert got.channel == 3  # the logical channel; the chunks travelled on bulk


async def test_group_send_all_and_round_robin_one(pair: Pair, registry: InMemoryRegistry) -> None:
    a, b = pair
    received: dict[str, list[bytes]] = {}
    refs = []
    for plane, name in ((a, "m1"), (b, "m2"), (b, "m3")):
        ep = plane.open_endpoint(name, handler=lambda m, n=name: received.setdefault(n, []).append(m.payload))
        await ep.join_group("workers")
        refs.append(ep.ref)
    tx = a.open_endpoint("tx")
    ids = await tx.send(Group("workers"), b"all")
    assert len(ids) == 3
    for i in range(6):
        await tx.send(Group("workers", "one"), f"one{i}".encode())
    await async_wait_until(lambda: sum(len(v) for v in received.values()) == 9, 3, what="group deliveries")
    # Sorted by (node, agent): m1 (n0), m2 (n1), m3 (n1), then again.
    assert received["m1"] == [b"all", b"one0", b"one3"]
    assert received["m2"] == [b"all", b"one1", b"one4"]
    assert received["m3"] == [b"all", b"one2", b"one5"]


async def test_same_node_send_does_not_cross_tcp(pair: Pair) -> None:
    a, _ = pair
    rx = a.open_endpoint("local-rx")
    tx = a.open_endpoint("local-tx")
    sent_before = a.sent
    await tx.send(rx.ref, b"here")
    assert (await rx.receive(timeout=1)).payload == b"here"
    reply_task = asyncio.create_task(tx.call(rx.ref, b"q", timeout=2))
    request = await rx.receive(timeout=1)
    rx.reply(request, b"a")
    assert (await reply_task).payload == b"a"
    assert a.sent == sent_before


async def test_tenants_cannot_address_each_other(pair: Pair) -> None:
    a, b = pair
    other = b.open_endpoint("x", tenant="acme")
    with pytest.raises(NotFound):
        await a.open_endpoint("me").send(other.ref, b"x")


async def test_metrics_per_channel_are_updated(pair: Pair) -> None:
    # Messages, bytes and batch sizes per channel, and drops by reason, reach Prometheus.
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    a, b = pair
    rx = b.open_endpoint("m", handler=lambda m: None)
    before_in = sample("mabeam_dataplane_messages_total", channel="high", direction="in")
    before_bytes = sample("mabeam_dataplane_bytes_total", channel="high", direction="out")
    before_batches = sample("mabeam_dataplane_batch_size_count", channel="high")
    for _ in range(100):
        a.router.cast(None, rx.ref, b"x" * 10, channel="high")
    await async_wait_until(lambda: sample("mabeam_dataplane_messages_total", channel="high", direction="in")
                     >= before_in + 100, 3, what="metrics")
    assert sample("mabeam_dataplane_bytes_total", channel="high", direction="out") == before_bytes + 1000
    assert 0 < sample("mabeam_dataplane_batch_size_count", channel="high") - before_batches < 100
    assert sample("mabeam_dataplane_latency_seconds_count", channel="high") > 0
