"""kill -9 of the active coordinator under SubmitBids streams: every acknowledged bid survives, none is applied twice."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time

from mabeam_client.coordinator import CoordinatorClient


async def test_kill9_under_bid_streams_with_100_bidders(coordinators) -> None:
    # 100 bidders share 4 bid streams; the leader is killed mid-run. The SDK reopens the streams on the
    # new leader and resends what was unacknowledged with the same ids. Afterwards the durable log holds
    # exactly the acknowledged bids, each at the seq its ack named.
    cluster = coordinators(2)
    leader = cluster.leader()
    standby = next(n for n in cluster.coordinators if n is not leader)
    coord = CoordinatorClient([leader.endpoint, standby.endpoint], failover_timeout=20.0)
    auction = await coord.create_auction("sealed", {"pricing": "first"})
    streams = [coord.bid_stream() for _ in range(4)]
    acked: dict[str, int] = {}  # bidder -> seq
    stop, killed = asyncio.Event(), asyncio.Event()
    enough_before, enough_after = asyncio.Event(), asyncio.Event()
    after_kill = 0

    async def bidder(i: int) -> None:
        nonlocal after_kill
        bids = streams[i % len(streams)]
        for n in itertools.count():
            if stop.is_set():
                return
            name = f"bidder-{i}-{n}"
            ack = await bids.submit(auction.id, {"type": "bid", "bidder": name, "amount": 1 + (i * 7 + n) % 500},
                                    client_event_id=name)
            assert name not in acked
            acked[name] = ack.seq
            if len(acked) >= 300:
                enough_before.set()
            if killed.is_set():
                after_kill += 1
                if after_kill >= 300:
                    enough_after.set()

    tasks = [asyncio.create_task(bidder(i)) for i in range(100)]
    await asyncio.wait_for(enough_before.wait(), 30)
    leader.signal(signal.SIGKILL)
    killed.set()
    killed_at = time.monotonic()
    await asyncio.wait_for(enough_after.wait(), 30)
    stop.set()
    await asyncio.gather(*tasks)
    assert time.monotonic() - killed_at < 30
    assert sum(s.reconnects for s in streams) >= 1
    for bids in streams:
        await bids.close()

    closed = await coord.close_instance(auction.id)
    receipt = closed.receipt
    in_log = {r["event"]["bidder"]: seq for seq, r in enumerate(receipt["events"], 1) if r["event"]["type"] == "bid"}
    lost = [name for name, seq in acked.items() if in_log.get(name) != seq]
    assert not lost, f"acknowledged bids lost or moved: {lost[:5]}"
    assert len(in_log) == len(acked), "the log holds bids nobody saw acknowledged"
    await coord.close()
