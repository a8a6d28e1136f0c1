"""meshd's internals measured in-process, for ``bench/`` (which never imports meshd).

The benchmarks' headline figures go through real meshd processes; these are
the figures *under* them — the data plane alone, the watch-fed view alone —
which need the internals in the measuring process. Each command runs in its
own process and prints one JSON line of raw figures; ``bench/`` turns them into
its keys and ratios::

    python -m meshd.inplane plane-throughput '{"sizes": {"100b": 100}, "counts": {"100b": 1000}, "calls": 2000}'
    python -m meshd.inplane plane-hol multi|single SECONDS BULK_BYTES URGENT_BYTES
    python -m meshd.inplane view-lookups ETCD_ENDPOINT CLUSTER TENANT NAME REPS

``plane-*``: this process hosts a sending :class:`DataPlane`; the receiving one
is a :class:`~meshd.dataplane.testing.PeerProcess` (role ``echo`` or
``latency``). ``view-lookups``: what a send does to resolve a name, a
dictionary lookup in a :class:`~meshd.view.ClusterView` loaded from etcd.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any

from mabeam.dataplane.errors import DeadlineExceeded, ResourceExhausted
from mabeam.dataplane.message import AgentRef
from mabeam.etcd.client import EtcdClient
from meshd.dataplane import DataPlane, DataPlaneConfig
from meshd.dataplane.testing import PeerProcess
from meshd.view import ClusterView


async def warm_up(plane: DataPlane, target: AgentRef) -> None:
    """First call, retried: the peer may process its peer_up after our call arrives (its reply is then lost)."""
    for _ in range(20):
        try:
            await plane.call(None, target, b"warm-up", timeout=0.5)
            return
        except DeadlineExceeded:
            continue
    raise RuntimeError("the peer process never answered")


async def _linked(node_id: str, peer: PeerProcess, config: DataPlaneConfig) -> tuple[DataPlane, AgentRef]:
    plane = DataPlane(node_id, config)
    await plane.start()
    plane.peer_up(peer.node_id, peer.addresses)
    peer.command(peer_up={"node_id": plane.node_id, "addresses": plane.addresses})
    target = AgentRef("default", peer.node_id, "svc")
    await warm_up(plane, target)
    return plane, target


async def plane_throughput(sizes: dict[str, int], counts: dict[str, int], calls: int) -> dict[str, Any]:
    """Casts/s per size (N casts on ``normal``, then a call as FIFO barrier) and 64 B call round trips (µs)."""
    peer = PeerProcess("bench-rx", role="echo")
    plane: DataPlane | None = None
    out: dict[str, Any] = {"seconds": {}}
    try:
        plane, target = await _linked("bench-tx", peer, DataPlaneConfig())
        for key, count in counts.items():
            payload = b"x" * sizes[key]
            started = time.perf_counter()
            cast_now = plane.router.cast  # the sync path DataPlane.cast wraps (no coroutine per message)
            for i in range(count):
                try:
                    cast_now(None, target, payload)
                except ResourceExhausted:
                    await plane.cast(None, target, payload)
                if i & 511 == 511:
                    await asyncio.sleep(0)
            await plane.call(None, target, b"barrier", timeout=120)
            out["seconds"][key] = time.perf_counter() - started
        rtts = []
        for _ in range(calls):
            started_ns = time.perf_counter_ns()
            await plane.call(None, target, b"x" * 64, timeout=10)
            rtts.append((time.perf_counter_ns() - started_ns) / 1000)
        out["call_rtts_us"] = rtts
    finally:
        if plane is not None:
            await plane.stop()
        peer.close()
    return out


async def _urgent(plane: DataPlane, target: AgentRef, seconds: float, size: int) -> int:
    payload = b"u" * size
    sent = 0
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        plane.router.cast(None, target, payload, channel="high")  # the sync path DataPlane.cast wraps
        sent += 1
        next_at += 0.001
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return sent


async def _bulk(plane: DataPlane, target: AgentRef, payload: bytes, pace_bytes_per_s: float | None,
                done: list[int]) -> None:
    while True:
        started = time.monotonic()
        await plane.call(None, target, payload, channel="bulk", timeout=120)
        done[0] += len(payload)
        if pace_bytes_per_s:
            await asyncio.sleep(max(0.0, len(payload) / pace_bytes_per_s - (time.monotonic() - started)))


async def _regime(plane: DataPlane, target: AgentRef, peer: PeerProcess, seconds: float, urgent_size: int,
                  bulk: bytes, bulk_senders: int, pace: float | None) -> dict[str, Any]:
    done = [0]
    cpu_before = time.process_time()
    peer_before = (await asyncio.to_thread(peer.ask, report=True))["cpu_s"]  # also starts a new sample
    async with asyncio.TaskGroup() as tg:
        senders = [tg.create_task(_bulk(plane, target, bulk, pace, done)) for _ in range(bulk_senders)]
        started = time.monotonic()
        await _urgent(plane, target, seconds, urgent_size)
        elapsed = time.monotonic() - started
        for task in senders:
            task.cancel()
    # Barrier: everything sent so far on high (FIFO per channel) has arrived once this call returns.
    await plane.call(None, target, b"barrier", channel="high", timeout=120)
    report = await asyncio.to_thread(peer.ask, report=True)
    return {"latencies_us": report["latencies_us"], "bulk_bytes": done[0], "seconds": elapsed,
            "cpu_sender_s": time.process_time() - cpu_before, "cpu_receiver_s": report["cpu_s"] - peer_before}


async def plane_hol(mode: str, seconds: float, bulk_size: int, urgent_size: int) -> dict[str, Any]:
    """Urgent one-way latencies (µs) idle, under two full-speed bulk senders, and under one paced to a tenth."""
    config = {"single_channel": mode == "single"}
    peer = PeerProcess("hol-rx", role="latency", extra=["--config", json.dumps(config)])
    plane: DataPlane | None = None
    try:
        plane, target = await _linked("hol-tx", peer, DataPlaneConfig(**config))
        # Built once, before any regime: building 64 MiB inside a bulk task stalled the sender's loop (and so
        # the urgent stream) for tens of ms at the start of each regime.
        bulk = b"B" * bulk_size
        idle = await _regime(plane, target, peer, seconds, urgent_size, bulk, 0, None)
        full = await _regime(plane, target, peer, seconds, urgent_size, bulk, 2, None)
        pace = full["bulk_bytes"] / full["seconds"] / 10
        paced = await _regime(plane, target, peer, seconds, urgent_size, bulk, 1, pace)
    finally:
        if plane is not None:
            await plane.stop()
        peer.close()
    return {"idle": idle, "bulk": full, "paced": paced}


async def view_lookups(etcd_endpoint: str, cluster: str, tenant: str, name: str, reps: int) -> dict[str, Any]:
    """Name lookups/s in a view loaded from etcd (the cache a send resolves names in; no RPC at all)."""
    etcd = EtcdClient([etcd_endpoint])
    try:
        view = ClusterView(cluster)
        view.reload(*(await etcd.get_prefix(f"/mabeam/{cluster}/".encode())))
    finally:
        await etcd.close()
    if (tenant, name) not in view.names:
        raise SystemExit(f"name {name!r} is not registered in tenant {tenant!r} of cluster {cluster!r}")
    started = time.perf_counter()
    for _ in range(reps):
        view.names.get((tenant, name))
    return {"lookups_per_s": reps / (time.perf_counter() - started)}


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    import uvloop

    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> None:
    """Run one measurement and print its JSON line."""
    parser = argparse.ArgumentParser(prog="python -m meshd.inplane", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    throughput = commands.add_parser("plane-throughput")
    throughput.add_argument("spec", help='JSON {"sizes": {key: bytes}, "counts": {key: n}, "calls": n}')
    hol = commands.add_parser("plane-hol")
    hol.add_argument("mode", choices=["multi", "single"])
    hol.add_argument("seconds", type=float)
    hol.add_argument("bulk_bytes", type=int)
    hol.add_argument("urgent_bytes", type=int)
    lookups = commands.add_parser("view-lookups")
    for field in ("etcd", "cluster", "tenant", "name"):
        lookups.add_argument(field)
    lookups.add_argument("reps", type=int)
    args = parser.parse_args(argv)
    if args.command == "plane-throughput":
        spec = json.loads(args.spec)
        result = _run(plane_throughput(spec["sizes"], spec["counts"], spec["calls"]))
    elif args.command == "plane-hol":
        result = _run(plane_hol(args.mode, args.seconds, args.bulk_bytes, args.urgent_bytes))
    else:
        result = _run(view_lookups(args.etcd, args.cluster, args.tenant, args.name, args.reps))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
