"""kill -9 and SIGSTOP of the active coordinator: takeover within 3 s, nothing acknowledged lost, no stale writes."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from typing import Any

from coordinator import keys
from coordinator.mechanisms import EnglishAuction
from mabeam.dev.testing import async_wait_until, slow
from mabeam.etcd.client import EtcdClient
from mabeam_client.coordinator import CoordinatorClient
from mabeam_client.errors import MabeamError


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _wait_leader(endpoint: str, timeout: float) -> float:
    """Seconds until the node at ``endpoint`` says it leads."""
    started = time.monotonic()
    async with CoordinatorClient(endpoint, timeout=0.5, failover_timeout=0.0) as probe:
        async def leads() -> bool:
            return (await probe.leader()).is_leader

        await async_wait_until(leads, timeout, interval=0.02, what=f"{endpoint} takes over")
    return time.monotonic() - started


async def test_kill9_during_english_auction_with_100_bidders(coordinators, etcd_server) -> None:
    # 100 bidders bid concurrently; the leader is killed mid-auction. The standby takes over within 3 s,
    # every acknowledged bid is in the durable log, and the outcome equals the pure mechanism run on them.
    cluster = coordinators(2)
    leader = cluster.leader()
    standby = next(n for n in cluster.coordinators if n is not leader)
    coord = CoordinatorClient([leader.endpoint, standby.endpoint], failover_timeout=20.0)
    start = now_ms()
    config = {"start_price": 1, "min_increment": 1, "opens_at": start, "quiet_period": 4000,
              "hard_deadline": start + 60_000}
    auction = await coord.create_auction("english", config)
    acked: dict[str, tuple[int, int, dict]] = {}  # cid -> (seq, now, event)
    amounts = itertools.count(1)
    stop = asyncio.Event()
    acked_after_kill = 0
    killed = asyncio.Event()
    enough_before, enough_after = asyncio.Event(), asyncio.Event()

    async def bidder(i: int) -> None:
        nonlocal acked_after_kill
        for n in itertools.count():
            if stop.is_set():
                return
            event = {"type": "bid", "bidder": f"bidder-{i}", "amount": next(amounts)}
            cid = f"b{i}-{n}"
            try:
                ack = await coord.submit_bid(auction.id, event, client_event_id=cid)
            except MabeamError as error:
                assert error.reason in ("INVALID_EVENT", "INSTANCE_CLOSED"), error
                continue
            acked[cid] = (ack.seq, ack.now_ms, event)
            if len(acked) >= 150:
                enough_before.set()
            if killed.is_set():
                acked_after_kill += 1
                if acked_after_kill >= 100:
                    enough_after.set()

    async def killer() -> float:
        await enough_before.wait()
        leader.signal(signal.SIGKILL)
        killed.set()
        takeover = await _wait_leader(standby.endpoint, 10.0)
        await enough_after.wait()
        stop.set()
        return takeover

    bidders = [asyncio.create_task(bidder(i)) for i in range(100)]
    takeover = await killer()
    await asyncio.gather(*bidders)
    assert takeover <= slow(3.0), f"takeover took {takeover:.2f}s"

    async def concluded() -> Any:
        final = await coord.get_auction(auction.id)
        return final if final.state == "concluded" else None

    final = await async_wait_until(concluded, 15, interval=0.2, what="the auction closes after its quiet period")
    receipt = final.receipt
    bids_in_log = {(r["event"]["bidder"], r["event"]["amount"]): seq
                   for seq, r in enumerate(receipt["events"], 1) if r["event"]["type"] == "bid"}
    for cid, (seq, _, event) in acked.items():
        assert bids_in_log.get((event["bidder"], event["amount"])) == seq, f"acknowledged bid {cid} lost"
    assert len(bids_in_log) == len(acked), "the log holds bids nobody saw acknowledged"

    pure = EnglishAuction(config)
    for _seq, now, event in sorted(acked.values(), key=lambda item: item[0]):
        pure.apply(event, now)
    outcome = final.outcome
    pure.apply({"type": "tick"}, outcome["closed_at"])
    assert pure.outcome().model_dump(mode="json") == outcome
    await coord.close()


async def test_deposed_leader_cannot_write(coordinators, etcd_server, cluster_name) -> None:
    # SIGSTOP the leader while a bid to it is in flight, let the standby take over, SIGCONT:
    # the old leader answers no further request and nothing it wrote lands after the takeover.
    cluster = coordinators(2)
    old = cluster.leader()
    new = next(n for n in cluster.coordinators if n is not old)
    etcd = EtcdClient([etcd_server.endpoint])
    async with CoordinatorClient(old.endpoint, failover_timeout=0.0) as to_old, \
            CoordinatorClient(new.endpoint, failover_timeout=20.0) as to_new:
        auction = await to_old.create_auction("sealed", {"pricing": "first"})
        await to_old.submit_bid(auction.id, {"type": "bid", "bidder": "early", "amount": 1})
        old_term = json.loads((await etcd.get(keys.leader(cluster_name))).value)["term"]
        old.signal(signal.SIGSTOP)
        in_flight = asyncio.create_task(to_old.submit_bid(auction.id, {"type": "bid", "bidder": "stale",
                                                                        "amount": 99}))
        await _wait_leader(new.endpoint, 10.0)
        leader_kv = await etcd.get(keys.leader(cluster_name))
        assert json.loads(leader_kv.value)["term"] > old_term
        await to_new.submit_bid(auction.id, {"type": "bid", "bidder": "late", "amount": 5})
        old.signal(signal.SIGCONT)
        try:
            await asyncio.wait_for(in_flight, 10)
            stale_acked = True
        except MabeamError:
            stale_acked = False
        try:
            await to_old.submit_bid(auction.id, {"type": "bid", "bidder": "after", "amount": 7})
            raise AssertionError("the deposed leader accepted a bid")
        except MabeamError as error:
            assert error.reason == "WRONG_NODE", error
        events, _ = await etcd.get_prefix(keys.events(cluster_name, auction.id))
        for kv in events:
            record = json.loads(kv.value)
            if record["term"] == old_term:
                assert kv.mod_revision < leader_kv.mod_revision, "a deposed leader's write landed after takeover"
        bidders = [json.loads(kv.value)["event"].get("bidder") for kv in events]
        assert "after" not in bidders
        assert ("stale" in bidders) == stale_acked
    await etcd.close()
