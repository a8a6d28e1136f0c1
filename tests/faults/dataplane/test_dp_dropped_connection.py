"""A connection cut mid-stream: at-most-once by default, exactly once in acknowledged mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mabeam.dataplane.message import AgentRef
from mabeam.dev.testing import async_wait_until
from meshd.dataplane import DataPlane, DataPlaneConfig, InMemoryRegistry
from meshd.dataplane.testing import TcpProxy


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[DataPlane, DataPlane, list[TcpProxy]]]:
    """n0 reaches n1 only through cuttable proxies (one per channel); n1 reaches n0 directly."""
    registry = InMemoryRegistry()
    cfg = DataPlaneConfig(retransmit_after=0.2)
    a, b = DataPlane("n0", cfg, registry), DataPlane("n1", cfg, registry)
    await a.start()
    await b.start()
    proxies = {name: TcpProxy(address) for name, address in b.addresses.items()}
    for proxy in proxies.values():
        await proxy.start()
    a.peer_up("n1", {name: proxy.address for name, proxy in proxies.items()})
    b.peer_up("n0", a.addresses)
    try:
        yield a, b, list(proxies.values())
    finally:
        for proxy in proxies.values():
            await proxy.close()
        await a.stop()
        await b.stop()


async def _stream(a: DataPlane, target: AgentRef, proxies: list[TcpProxy], got: list[int], total: int,
                  acknowledged: bool) -> int:
    """Send ``total`` casts, cutting every connection twice while messages are in flight; returns cuts.

    A cut waits until the receiver is within 2,000 messages of the sender (so messages are in flight) while
    the sending goes on: what is sent before a connection is up (at the start, or after a cut) may be lost
    under at-most-once, so stopping to wait for it could wait forever. The sender stays at most ~4,000 ahead
    of a receiver that is making progress.
    """
    loop = asyncio.get_running_loop()
    cuts, cut_at = 0, [total // 3, 2 * total // 3]
    progress, progress_at = -1, loop.time()
    for i in range(total):
        await a.cast(None, target, str(i).encode(), acknowledged=acknowledged)
        if cut_at and i >= cut_at[0] and got and got[-1] >= i - 2000:
            cuts += sum(proxy.drop() for proxy in proxies)
            cut_at.pop(0)
        if i & 127 == 127:
            await asyncio.sleep(0)  # both planes and the proxies live on this loop
            while got and i - got[-1] > 4000 and loop.time() - progress_at < 0.05:
                if got[-1] != progress:
                    progress, progress_at = got[-1], loop.time()
                await asyncio.sleep(0.001)  # flow control, not a synchronisation: a stalled receiver is passed
            if got and got[-1] != progress:
                progress, progress_at = got[-1], loop.time()
    return cuts


async def test_at_most_once_under_a_dropped_connection(proxied: tuple[DataPlane, DataPlane, list[TcpProxy]]
                                                        ) -> None:
    # Every message arrives at most once and in order; some may be lost with the connection.
    a, b, proxies = proxied
    got: list[int] = []
    rx = b.open_endpoint("rx", handler=lambda m: got.append(int(m.payload)))
    total = 20000
    cuts = await _stream(a, rx.ref, proxies, got, total, acknowledged=False)
    assert cuts > 0
    await a.cast(None, rx.ref, str(total).encode())  # a marker after the stream
    await async_wait_until(lambda: got and got[-1] == total, 10, what="marker")
    assert len(got) == len(set(got)), "duplicates under at-most-once"
    assert got == sorted(got), "reordered"


async def test_acknowledged_mode_delivers_exactly_once_across_a_drop(
        proxied: tuple[DataPlane, DataPlane, list[TcpProxy]]) -> None:
    # Retransmission fills the gaps a cut leaves; dedup by id hides the duplicates from the handler.
    a, b, proxies = proxied
    got: list[int] = []
    rx = b.open_endpoint("rx", handler=lambda m: got.append(int(m.payload)))
    total = 20000
    cuts = await _stream(a, rx.ref, proxies, got, total, acknowledged=True)
    assert cuts > 0
    await async_wait_until(lambda: len(set(got)) == total, 15, what=f"all {total} delivered")
    await async_wait_until(lambda: a.statistics()["unacked"]["n1"] == 0, 10, what="all acked")
    assert len(got) == total, "a message reached the handler twice"
    assert sorted(got) == list(range(total))
    assert a.drops["retransmitted"] > 0, "the cut lost nothing: the test proved nothing"
