"""Registry benchmark: ``python -m bench registry [--quick] [--json]``.

On a real 3-node dev cluster (embedded etcd, three meshd processes):

- cached lookups/s through gRPC ``Lookup`` (1 and 32 in flight), against the
  same number of direct etcd range reads (what a cache-less lookup would cost),
  and the in-process cache lookup a send does (no RPC at all);
- registrations/s (one etcd transaction each, 1 and 32 in flight), against raw
  etcd create-if-absent transactions at the same concurrency;
- convergence: registered on node A → visible in node B's cache, p50/p99;
- leader failover after kill -9 of the ``mesh`` leader (TTL 2 s).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import inplane, percentile, rate
from mabeam.dev.cluster import DevCluster
from mabeam.dev.testing import async_wait_until, wait_until
from mabeam.etcd.client import EtcdClient, cmp_create_revision, op_put
from mabeam_client.errors import NotFound
from mabeam_client.mesh import MeshClient, SyncMeshClient


async def _throughput(cluster: DevCluster, quick: bool) -> dict[str, Any]:
    n = 2000 if quick else 10000
    mesh = MeshClient(cluster.endpoints[0])
    other = MeshClient(cluster.endpoints[1])
    etcd = EtcdClient([cluster.etcd_endpoint])
    out: dict[str, Any] = {}
    try:
        await mesh.register_name("bench-target", "agent-1")
        await async_wait_until(lambda: other.lookup("bench-target"), 5, interval=0.01, what="node-2's cache has the name")
        run = f"r{int(time.time())}"
        for conc in (1, 32):
            out[f"lookups_per_s_{conc}"] = await rate(lambda i: other.lookup("bench-target"), n, conc)
            key = f"/mabeam/{cluster.cluster}/names/default/bench-target".encode()
            out[f"etcd_range_per_s_{conc}"] = await rate(lambda i, k=key: etcd.get(k), n, conc)
            regs = n // 4
            out[f"registrations_per_s_{conc}"] = await rate(
                lambda i, c=conc: mesh.register_name(f"{run}-c{c}-{i}", f"agent-{i}"), regs, conc)
            out[f"etcd_txn_per_s_{conc}"] = await rate(
                lambda i, c=conc: etcd.txn([cmp_create_revision(f"/bench/{run}/{c}/{i}".encode(), 0)],
                                           [op_put(f"/bench/{run}/{c}/{i}".encode(), b"x")]), regs, conc)
        # What a send does to resolve a name: a dict lookup in the watch-fed view, no RPC at all
        # (measured by meshd's own entry point: bench/ never imports meshd).
        lookups = await asyncio.to_thread(inplane, "view-lookups", cluster.etcd_endpoint, cluster.cluster,
                                          "default", "bench-target", "200000")
        out["cache_lookups_per_s_in_process"] = lookups["lookups_per_s"]
        out["ratio_registrations_to_etcd_32"] = out["registrations_per_s_32"] / out["etcd_txn_per_s_32"]
        out["ratio_lookups_to_etcd_range_32"] = out["lookups_per_s_32"] / out["etcd_range_per_s_32"]
        await etcd.delete(f"/bench/{run}/".encode(), prefix=True)
    finally:
        await mesh.close()
        await other.close()
        await etcd.close()
    return out


async def _convergence(cluster: DevCluster, quick: bool) -> dict[str, Any]:
    samples = []
    a, b = MeshClient(cluster.endpoints[0]), MeshClient(cluster.endpoints[2])
    try:
        for i in range(50 if quick else 300):
            name = f"conv-{time.monotonic_ns()}-{i}"
            started = time.perf_counter()
            await a.register_name(name, "agent-c")
            while True:
                try:
                    await b.lookup(name)
                    break
                except NotFound:
                    continue
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        await a.close()
        await b.close()
    return {"convergence_p50_ms": percentile(samples, 50), "convergence_p99_ms": percentile(samples, 99),
            "convergence_samples": len(samples)}


def _failover(cluster: DevCluster, rounds: int) -> dict[str, Any]:
    times = []
    for _ in range(rounds):
        probe = SyncMeshClient(cluster.endpoints[0])
        try:
            leader = wait_until(lambda p=probe: p.leader().node_id, 10.0, what="a leader")
        finally:
            probe.close()
        index = int(leader.split("-")[1]) - 1
        witness = SyncMeshClient(cluster.endpoints[(index + 1) % len(cluster.nodes)])
        try:
            killed = time.perf_counter()
            cluster.kill(index)
            wait_until(lambda w=witness, old=leader: w.leader().node_id not in ("", old), 10.0, interval=0.005,
                       what="a new leader")
            times.append(time.perf_counter() - killed)
        finally:
            witness.close()
        cluster.start_node(cluster.nodes[index])
    return {"failover_s_median": percentile(times, 50), "failover_s_max": max(times), "failover_rounds": len(times),
            "lease_ttl_s": cluster.lease_ttl}


def run(quick: bool) -> dict[str, Any]:
    """Run every registry measurement on a fresh dev cluster."""
    cluster = DevCluster(nodes=3, lease_ttl=2, cluster="bench")
    try:
        cluster.start()
        result = asyncio.run(_throughput(cluster, quick))
        result.update(asyncio.run(_convergence(cluster, quick)))
        result.update(_failover(cluster, 2 if quick else 5))
    finally:
        cluster.close()
    return result
