"""Durable auctions through real coordinator processes: sealed and English, replay on takeover, standby redirect."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from coordinator.mechanisms import EnglishAuction, SealedBidAuction
from mabeam.dev.testing import wait_until
from mabeam_client.coordinator import CoordinatorClient, SyncCoordinatorClient
from mabeam_client.errors import FailedPrecondition, Unavailable


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_sealed_auction_outcome_and_receipt(coordinators) -> None:
    # A second-price auction closed explicitly: the outcome equals the pure mechanism on the same events.
    cluster = coordinators(1)
    with SyncCoordinatorClient(cluster.coordinator_endpoints) as coord:
        auction = coord.create_auction("sealed", {"pricing": "second", "reserve": 5})
        for bidder, amount in (("a", 50), ("b", 40), ("c", 45)):
            ack = coord.submit_bid(auction.id, {"type": "bid", "bidder": bidder, "amount": amount})
            assert ack.state == "open"
        closed = coord.close_instance(auction.id)
        assert closed.state == "concluded"
        outcome = closed.outcome
        assert (outcome["winner"], outcome["price"]) == ("a", 45)
        receipt = closed.receipt
        replayed = SealedBidAuction.replay(receipt["config"], receipt["events"])
        assert replayed.receipt().hash == closed.receipt_hash
        with pytest.raises(FailedPrecondition):
            coord.submit_bid(auction.id, {"type": "bid", "bidder": "d", "amount": 99})


def test_bid_is_idempotent_by_client_event_id(coordinators) -> None:
    # A retried bid with the same client id is answered with the first ack, never applied twice.
    cluster = coordinators(1)
    with SyncCoordinatorClient(cluster.coordinator_endpoints) as coord:
        auction = coord.create_auction("sealed", {"pricing": "first"})
        first = coord.submit_bid(auction.id, {"type": "bid", "bidder": "a", "amount": 5}, client_event_id="x1")
        again = coord.submit_bid(auction.id, {"type": "bid", "bidder": "a", "amount": 5}, client_event_id="x1")
        assert (again.seq, again.duplicate, first.duplicate) == (first.seq, True, False)
        assert coord.get_auction(auction.id).event_count == 1


def test_standby_redirects_and_takeover_replays(coordinators) -> None:
    # The standby names the leader; after the leader stops, the standby replays the log and the
    # English auction's deadline still closes it with the same standing bid.
    cluster = coordinators(2)
    leader = cluster.leader()
    standby = next(n for n in cluster.coordinators if n is not leader)
    with SyncCoordinatorClient(standby.endpoint, failover_timeout=0.0) as direct:
        with pytest.raises(Unavailable) as raised:
            direct.list_instances()
        assert raised.value.reason == "WRONG_NODE"
    with SyncCoordinatorClient(standby.endpoint) as coord:  # follows the redirect
        start = now_ms()
        auction = coord.create_auction("english", {"start_price": 10, "min_increment": 1, "opens_at": start,
                                                   "quiet_period": 2500, "hard_deadline": start + 60_000})
        coord.submit_bid(auction.id, {"type": "bid", "bidder": "a", "amount": 10})
        coord.submit_bid(auction.id, {"type": "bid", "bidder": "b", "amount": 12})
        assert coord.redirects >= 1
        leader.signal(signal.SIGKILL)
        new_leader = cluster.leader(timeout=10, exclude=leader)
        assert new_leader is standby
        final = wait_until(lambda: (a := coord.get_auction(auction.id)).state == "concluded" and a, 10, interval=0.1,
                           what="the English auction closes after takeover")
        outcome = final.outcome
        assert (outcome["winner"], outcome["price"], outcome["reason"]) == ("b", 12, "quiet_period")
        receipt = final.receipt
        assert EnglishAuction.replay(receipt["config"], receipt["events"]).receipt().hash == final.receipt_hash


async def _watch_all(endpoint: str, instance_id: str) -> list:
    async with CoordinatorClient(endpoint) as coord:
        return [item async for item in coord.watch(instance_id)]


def test_watch_streams_every_event_then_the_end(coordinators) -> None:
    # WatchAuction (served from etcd) sends every accepted event in order and ends with the outcome.
    cluster = coordinators(1)
    with SyncCoordinatorClient(cluster.coordinator_endpoints) as coord:
        auction = coord.create_auction("sealed", {"pricing": "first"})
        for i in range(5):
            coord.submit_bid(auction.id, {"type": "bid", "bidder": f"b{i}", "amount": 10 + i})
        coord.close_instance(auction.id)
    items = asyncio.run(_watch_all(cluster.coordinator_endpoints[0], auction.id))
    assert [i.seq for i in items[:-1]] == [1, 2, 3, 4, 5, 6]
    assert items[-1].final_state == "concluded"
    assert items[-1].outcome["winner"] == "b4"
