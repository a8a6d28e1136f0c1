"""Coordinator benchmark: ``python -m bench coordinator [--quick] [--json]``.

On an embedded etcd with two real coordinator processes (active + standby, TTL 2 s):

- durable bids/s through the gRPC API (SubmitBid on a sealed auction, each
  bid acknowledged only after its etcd transaction) with 1 and 32 clients in
  flight, and raw etcd create-if-absent transactions/s at the same
  concurrency in the same run (the durable ceiling); their ratio;
- close → result latency of a sealed auction with 1,000 bidders (CloseInstance
  round trip, outcome and receipt hash durable);
- variable compare-and-set ops/s (sequential: each CAS needs the last version);
- failover: kill -9 of the leader → the standby answers as leader.

The machine has 2 cores shared by etcd, both coordinators, the bench client
and whatever else runs: figures are noisy; compare runs on the same machine.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from typing import Any

import uvloop

from coordinator.testing import CoordinatorCluster
from mabeam.etcd.client import EtcdClient, cmp_create_revision, op_put
from mabeam.etcd.embedded import EmbeddedEtcd
from mabeam_client.coordinator import CoordinatorClient


async def _rate(worker: Any, total: int, concurrency: int) -> float:
    """Operations per second running worker(i) for i < total with ``concurrency`` in flight."""
    counter = iter(range(total))

    async def lane() -> None:
        for i in counter:
            await worker(i)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def _throughput(cluster: CoordinatorCluster, etcd_endpoint: str, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n1, n32 = (400, 4000) if quick else (2000, 20000)
    async with CoordinatorClient(cluster.endpoints) as coord:
        for conc, total in ((1, n1), (32, n32)):
            auction = await coord.create_auction("sealed", {"pricing": "second"})

            async def bid(i: int, auction_id: str = auction.id) -> None:
                await coord.submit_bid(auction_id, {"type": "bid", "bidder": f"b{i}", "amount": 1 + i % 1000},
                                       client_event_id=f"c{i}")

            await bid(total)  # warm the channel and the leader's path
            out[f"bids_per_s_{conc}"] = round(await _rate(bid, total, conc))
    etcd = EtcdClient([etcd_endpoint])
    try:
        run = f"/bench/coord/{time.time_ns()}/".encode()
        for conc, total in ((1, n1), (32, n32)):
            async def txn(i: int, c: int = conc) -> None:
                key = run + f"{c}/{i}".encode()
                await etcd.txn([cmp_create_revision(key, 0)], [op_put(key, b"x")], [])

            out[f"etcd_txn_per_s_{conc}"] = round(await _rate(txn, total, conc))
        await etcd.delete(run, prefix=True)
    finally:
        await etcd.close()
    out["ratio_bids_to_etcd"] = round(out["bids_per_s_32"] / out["etcd_txn_per_s_32"], 3)
    return out


async def _close_latency(cluster: CoordinatorCluster, quick: bool) -> dict[str, Any]:
    samples = []
    async with CoordinatorClient(cluster.endpoints) as coord:
        for _ in range(2 if quick else 5):
            auction = await coord.create_auction("sealed", {"pricing": "second"})
            lanes = iter(range(1000))

            async def lane(auction_id: str = auction.id, lanes: Any = lanes) -> None:
                for i in lanes:
                    await coord.submit_bid(auction_id, {"type": "bid", "bidder": f"b{i}", "amount": 1 + i})

            await asyncio.gather(*(lane() for _ in range(32)))
            started = time.perf_counter()
            closed = await coord.close_instance(auction.id)
            samples.append((time.perf_counter() - started) * 1000)
            assert closed.state == "concluded" and closed.receipt_hash
    return {"close_to_result_ms_1k": round(statistics.median(samples), 1),
            "close_to_result_ms_1k_samples": [round(s, 1) for s in samples]}


async def _cas(cluster: CoordinatorCluster, quick: bool) -> dict[str, Any]:
    n = 300 if quick else 2000
    async with CoordinatorClient(cluster.endpoints) as coord:
        var = await coord.create_variable(f"bench{time.time_ns()}", {"type": "integer"}, 0)
        version = var.version
        started = time.perf_counter()
        for i in range(n):
            version = (await coord.set_variable(var.name, i, version)).version
        return {"var_cas_per_s": round(n / (time.perf_counter() - started))}


async def _failover(cluster: CoordinatorCluster) -> dict[str, Any]:
    leader = cluster.leader()
    standby = next(n for n in cluster.nodes if n is not leader)
    async with CoordinatorClient(standby.endpoint, timeout=0.5, failover_timeout=0.0) as probe:
        leader.signal(signal.SIGKILL)
        started = time.monotonic()
        while time.monotonic() - started < 15:
            try:
                if (await probe.leader()).is_leader:
                    break
            except Exception:  # noqa: BLE001 - "not yet" until the deadline
                pass
            await asyncio.sleep(0.01)
        return {"failover_s": round(time.monotonic() - started, 2)}


def run(quick: bool) -> dict[str, Any]:
    """Run every coordinator measurement on a fresh embedded etcd and two coordinators."""
    etcd = EmbeddedEtcd(name="bench-coordinator")
    etcd.start()
    cluster = CoordinatorCluster(etcd.endpoint, "bench", nodes=2, lease_ttl=2)
    try:
        cluster.start()
        # uvloop on the client side too: the client shares the two cores with the coordinator and etcd.
        result = uvloop.run(_throughput(cluster, etcd.endpoint, quick))
        result.update(asyncio.run(_close_latency(cluster, quick)))
        result.update(asyncio.run(_cas(cluster, quick)))
        result.update(asyncio.run(_failover(cluster)))
        result["note"] = ("2-core machine shared by etcd, two coordinators, the client and other engineers' tests: "
                          "figures are noisy")
    finally:
        cluster.close()
        etcd.close()
    return result
