"""A coordinator leader that goes silent under an open SubmitBids stream (SIGSTOP: its connections stay open,
nothing answers, as when its host is cut off): the stream notices, follows the new leader and the bid is
acknowledged there, instead of waiting forever on the silent connection (found on the netns test bed)."""

from __future__ import annotations

import asyncio
import signal

from mabeam_client.coordinator import CoordinatorClient


async def test_bid_stream_leaves_a_silent_leader(coordinators) -> None:
    cluster = coordinators(2)
    leader = cluster.leader()
    standby = next(n for n in cluster.coordinators if n is not leader)
    coord = CoordinatorClient([leader.endpoint, standby.endpoint], failover_timeout=40.0)
    auction = await coord.create_auction("sealed", {"pricing": "first"})
    bids = coord.bid_stream()
    first = await bids.submit(auction.id, {"type": "bid", "bidder": "early", "amount": 5}, client_event_id="early")
    leader.signal(signal.SIGSTOP)
    try:
        # The standby takes over after the lease TTL (2 s). Each attempt on the silent leader costs a keepalive
        # or connect timeout (2-4 s), and until the standby leads it redirects there (WRONG_NODE): on an idle
        # machine the bid lands in ~5-9 s; without keepalive it never did. 40 s leaves room for a busy machine.
        late = await asyncio.wait_for(
            bids.submit(auction.id, {"type": "bid", "bidder": "late", "amount": 7}, client_event_id="late"), 40)
        assert late.seq > first.seq and not late.duplicate  # (the new leader may log a tick in between)
        assert bids.reconnects >= 1
    finally:
        leader.signal(signal.SIGCONT)
        await bids.close()
        await coord.close()
