"""Durable-runs benchmark: ``python -m bench runs [--quick] [--json]``.

- **Appends** (``events_per_s_*``): an executor's fenced appends of ``BATCH`` events per
  transaction through the runs store (read-plan-write: the run's row, seqs, hash chain,
  fencing check), against ``raw_*_inserts_per_s``: the same event rows inserted by a bare
  driver loop with the same batching (sqlite3 / asyncpg, one transaction per batch), in
  the same run, on the same database. SQLite: a file in WAL mode (the bare loop with SQLite's
  default automatic checkpoint, inline in the commit that crosses 1000 pages; the store checkpoints
  on a thread of its own); PostgreSQL: a private server with fsync on. ``ratio_events_*`` = ours /
  raw (target ≥ 0.5): for SQLite the median of alternated pairs' ratios (five with ``--quick``, seven
  in the full run; each pair back to back under the same load), for PostgreSQL of three.
- **Start** (``start_run_p50_us``): StartRun over gRPC on a dev cluster (store insert, the
  run's etcd lease and the executor's claim).
- **Delivery** (``stream_delivery_p50_us`` / ``p99_us``): from the moment an AppendFrame (gRPC)
  is issued to node-1 until its ``frame.received`` event has been read off an SSE stream, on
  node-1 (same node) and on node-2 (cross node: the SQLite store, woken by a same-host datagram,
  etcd behind it). The reader is a process of its own (``bench/_sse_reader.py``, a blocking
  client, as a browser would be), stamping each event with ``time.perf_counter()`` (CLOCK_MONOTONIC,
  one clock for every process on Linux); in one event loop with the appender it would first
  handle the append's gRPC reply, which arrives at the same moment. The headline is the worse of
  the two, both are kept, beside ``http_get_floor``: one HTTP round trip (a snapshot GET) to the
  same agentd in the same run, paced the same way, the machine's floor for any request.
- **Failover** (``resume_after_kill_s``): kill -9 of the agentd executing a run → the next
  event on a stream served by another node (lease TTL 2 s; target ≤ TTL + 1 s), and
  ``frames_exactly_once``: that crashed run applied every frame and step exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from agentd.runs.model import EVENT_COLUMNS, NewEvent, RunSpec
from agentd.runs.state import chain
from agentd.runs.store import RunStore, open_store
from bench.common import percentile
from mabeam.dev.cluster import DevCluster
from mabeam.dev.postgres import DevPostgres
from mabeam_client.runs import RunClient

BATCH = 16
LEASE_TTL = 2
ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = json.dumps({"token": "lorem ipsum dolor", "index": 0})


def _events(n: int) -> list[NewEvent]:
    return [NewEvent("model.delta", json.dumps({"token": "lorem ipsum dolor", "index": i})) for i in range(n)]


async def _ours(store: RunStore, run_id: str, total: int) -> float:
    await store.start(RunSpec(run_id, "default", "tasker", "enqueue"), 1)
    await store.claim(run_id, 1, "bench", 1, 1, 3)
    batches = [_events(BATCH) for _ in range(total // BATCH)]
    started = time.perf_counter()
    for batch in batches:
        await store.append(run_id, 1, batch, 2)
    return (total // BATCH * BATCH) / (time.perf_counter() - started)


def _rows(run_id: str, total: int) -> list[list[tuple[Any, ...]]]:
    """The same event rows our store writes (seqs, hashes), made ahead so the raw loop only inserts."""
    from agentd.runs.state import plan_start

    row = plan_start(RunSpec(run_id, "default", "tasker", "enqueue"), None, 1).row
    batches = []
    for _ in range(total // BATCH):
        row, events = chain(row, _events(BATCH), 2)
        batches.append([tuple(getattr(e, c) for c in EVENT_COLUMNS) for e in events])
    return batches


def _checkpoint(path: str) -> None:
    """Fold the WAL into the database file; the next writer starts it over (best effort: a reader may hold it).

    RESTART, not TRUNCATE: a long-lived store's WAL file keeps the size it grew to and writers overwrite
    it; truncated, the side measured next pays for growing the file again (ext4 here: a commit that
    extends the WAL is ~13 µs slower than one that overwrites it).
    """
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA wal_checkpoint(RESTART)")
    finally:
        db.close()


def _raw_sqlite(path: str, run_id: str, total: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    sql = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    batches = _rows(run_id, total)
    started = time.perf_counter()
    for batch in batches:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(sql, batch)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return (total // BATCH * BATCH) / elapsed


async def _raw_postgres(dsn: str, run_id: str, total: int) -> float:
    conn = await asyncpg.connect(dsn)
    sql = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
           f"VALUES ({', '.join(f'${i + 1}' for i in range(len(EVENT_COLUMNS)))})")
    batches = _rows(run_id, total)
    started = time.perf_counter()
    for batch in batches:
        async with conn.transaction():
            await conn.executemany(sql, batch)
    elapsed = time.perf_counter() - started
    await conn.close()
    return (total // BATCH * BATCH) / elapsed


async def _appends(quick: bool) -> dict[str, Any]:
    total = 4000 if quick else 16000
    out: dict[str, Any] = {"append_batch": BATCH}
    with tempfile.TemporaryDirectory(prefix="bench-runs-") as tmp:
        path = str(Path(tmp) / "runs.sqlite")
        store = open_store(f"sqlite://{path}")
        await store.open()
        try:
            ours, raw = [], []
            for attempt in range(5 if quick else 7):  # alternated pairs: the two cores are shared (a pair is ~0.1-0.3 s)
                # Each side starts from a folded-back WAL: a checkpoint left over from the other side's rows
                # otherwise lands in whichever measurement comes next (the bare loop swung 64-169 k/s).
                await asyncio.to_thread(_checkpoint, path)
                ours.append(await _ours(store, f"ours-{attempt}", total))
                await asyncio.to_thread(_checkpoint, path)
                raw.append(await asyncio.to_thread(_raw_sqlite, path, f"raw-{attempt}", total))
        finally:
            await store.close()
        out["events_per_s_sqlite"] = round(statistics.median(ours))
        out["raw_sqlite_inserts_per_s"] = round(statistics.median(raw))
        # The median of the pairs' ratios: each pair ran back to back under the same load.
        out["ratio_events_sqlite"] = round(statistics.median(o / r for o, r in zip(ours, raw, strict=True)), 3)
        out["ratio_events_sqlite_pairs"] = [round(o / r, 3) for o, r in zip(ours, raw, strict=True)]
        out["events_per_s_sqlite_pairs"] = [[round(o), round(r)] for o, r in zip(ours, raw, strict=True)]
    with DevPostgres(fsync=True) as pg:
        dsn = pg.create_database()
        store = open_store(dsn)
        await store.open()
        try:
            ours, raw = [], []
            for attempt in range(3):
                ours.append(await _ours(store, f"ours-{attempt}", total // 2))
                raw.append(await _raw_postgres(dsn, f"raw-{attempt}", total // 2))
        finally:
            await store.close()
        out["events_per_s_postgres"] = round(statistics.median(ours))
        out["raw_postgres_inserts_per_s"] = round(statistics.median(raw))
        out["ratio_events_postgres"] = round(statistics.median(o / r for o, r in zip(ours, raw, strict=True)), 3)
    return out


async def _sse_reader(url: str) -> tuple[asyncio.subprocess.Process, asyncio.Queue[tuple[int, float]],
                                         asyncio.Task[None]]:
    """An SSE reader in a process of its own (bench/_sse_reader.py) and the queue of its (seq, arrival time)."""
    reader = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._sse_reader", url, stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert reader.stdout is not None
    stdout = reader.stdout
    first = await asyncio.wait_for(stdout.readline(), 60)
    if first.strip() != b"ready":
        raise RuntimeError(f"the SSE reader did not start: {first!r}")
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

    async def pump() -> None:
        while line := await stdout.readline():
            seq, at = line.split()
            queue.put_nowait((int(seq), float(at)))

    return reader, queue, asyncio.get_running_loop().create_task(pump())


async def _delivery(cluster: DevCluster, quick: bool) -> dict[str, Any]:
    n = 100 if quick else 400
    # The machine is shared: the 1-minute load average when the delivery part starts, beside its figures.
    out: dict[str, Any] = {"delivery_load_average_1m": round(os.getloadavg()[0], 2)}
    node1, node2 = cluster.nodes[0].agentd, cluster.nodes[1].agentd
    assert node1 is not None and node2 is not None
    async with RunClient(node1.endpoint) as runs:
        for where, agentd in (("same_node", node1), ("cross_node", node2)):
            run_id = f"delivery-{where}"
            await runs.start("tasker", run_id=run_id)
            reader, queue, pump = await _sse_reader(f"http://{agentd.http_endpoint}/v1/runs/{run_id}/stream")
            latencies = []
            for i in range(n):
                sent = time.perf_counter()
                appended = await runs.append(run_id, f"f{i}", "msg", {"steps": 0})
                while True:
                    seq, at = await asyncio.wait_for(queue.get(), 30)
                    if seq == appended.seq:
                        latencies.append((at - sent) * 1e6)
                        break
                await asyncio.sleep(0.01)  # paced: latency, not throughput
            reader.kill()
            await reader.wait()
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            out[f"stream_delivery_{where}"] = {"p50_us": round(percentile(latencies, 50)),
                                               "p99_us": round(percentile(latencies, 99)), "n": n}
        # The floor in the same run: one HTTP round trip to the same agentd (a snapshot GET), paced the same way.
        async with httpx.AsyncClient(base_url=f"http://{node1.http_endpoint}") as http:
            floor = []
            for _ in range(n):
                began = time.perf_counter()
                (await http.get("/v1/runs/delivery-same_node")).raise_for_status()
                floor.append((time.perf_counter() - began) * 1e6)
                await asyncio.sleep(0.01)
        out["http_get_floor"] = {"p50_us": round(percentile(floor, 50)), "p99_us": round(percentile(floor, 99)), "n": n}
        starts = []
        for i in range(40 if quick else 150):
            began = time.perf_counter()
            await runs.start("tasker", {"finish": True}, run_id=f"start-{i}")
            starts.append((time.perf_counter() - began) * 1e6)
        out["start_run_p50_us"] = round(percentile(starts, 50))
        out["start_run_p99_us"] = round(percentile(starts, 99))
    worst = max(("same_node", "cross_node"), key=lambda w: out[f"stream_delivery_{w}"]["p99_us"])
    out["stream_delivery_p50_us"] = max(out["stream_delivery_same_node"]["p50_us"],
                                        out["stream_delivery_cross_node"]["p50_us"])
    out["stream_delivery_p99_us"] = out[f"stream_delivery_{worst}"]["p99_us"]
    return out


def exactly_once(events: list[Any]) -> bool:
    """Every frame received once and handled once; every step recorded once and its progress reported once."""
    received = Counter(json.loads(e.payload_json)["frame_id"] for e in events if e.type == "frame.received")
    handled = Counter(json.loads(e.payload_json)["frame_id"] for e in events if e.type == "frame.handled")
    steps = Counter((p["frame_seq"], p["key"]) for e in events if e.type == "step.completed"
                    for p in [json.loads(e.payload_json)] if p["authoritative"])
    progress = Counter((p["frame"], p["step"]) for e in events if e.type == "progress"
                       for p in [json.loads(e.payload_json)])
    gap_free = [e.seq for e in events] == list(range(1, len(events) + 1))
    return (gap_free and received == handled and set(handled.values()) == {1} and set(steps.values()) == {1}
            and set(progress.values()) == {1} and len(progress) == len(steps))


async def _failover(cluster: DevCluster) -> dict[str, Any]:
    node1 = cluster.nodes[0].agentd
    assert node1 is not None
    others = [n.agentd.endpoint for n in cluster.nodes[1:] if n.agentd is not None]
    async with RunClient(node1.endpoint) as starter, RunClient(others) as consumer:
        await starter.start("tasker", {"steps": 40, "delay": 0.03}, run_id="failover")
        await starter.append("failover", "f-2", "msg", {"steps": 10, "finish": True})
        seen: list[Any] = []
        arrival: list[float] = []
        killed = asyncio.Event()

        async def consume() -> None:
            async for event in consumer.stream("failover"):
                seen.append(event)
                arrival.append(time.monotonic())
                if not killed.is_set() and sum(1 for e in seen if e.type == "progress") >= 10:
                    killed.set()

        reader = asyncio.get_running_loop().create_task(consume())
        await asyncio.wait_for(killed.wait(), 60)
        kill_at = time.monotonic()
        cluster.kill_daemon(node1)
        before = len(seen)
        await asyncio.wait_for(reader, 120)
        first_after = next(t for t in arrival[before:] if t > kill_at)
        return {"resume_after_kill_s": round(first_after - kill_at, 3), "lease_ttl_s": LEASE_TTL,
                "frames_exactly_once": exactly_once(seen), "failover_run_events": len(seen)}


async def _cluster_parts(quick: bool) -> dict[str, Any]:
    cluster = DevCluster(3, lease_ttl=LEASE_TTL, agentd=True,
                         runs_config={"lease_ttl": LEASE_TTL, "janitor_interval_s": 1.0})
    await asyncio.to_thread(cluster.start)
    try:
        out = await _delivery(cluster, quick)
        out.update(await _failover(cluster))
        return out
    finally:
        await asyncio.to_thread(cluster.close)


def run(quick: bool = False) -> dict[str, Any]:
    """Run every part; the result's keys are listed in the module docstring."""
    async def main() -> dict[str, Any]:
        out = await _appends(quick)
        out.update(await _cluster_parts(quick))
        out["targets"] = {"ratio_events_min": 0.5, "stream_delivery_p99_us_max": 10000,
                          "resume_after_kill_s_max": LEASE_TTL + 1}
        return out

    return asyncio.run(main())
