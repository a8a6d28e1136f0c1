"""Durable runs under faults: kill -9 of the executing agentd, a deposed executor, a tampered log, a graceful handoff."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter

import pytest

from agentd.runs.lease import RunLease
from agentd.runs.model import ExecutorFenced, NewEvent, RunSpec
from agentd.runs.store import open_store
from mabeam.dev.testing import async_wait_until
from mabeam.etcd.client import EtcdClient
from mabeam_client.cli import main as meshctl
from mabeam_client.runs import RunClient

RUNS_CONFIG = {"lease_ttl": 2, "cancel_grace_s": 1.0, "janitor_interval_s": 1.0, "pending_grace_s": 1.0}


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request) -> str:
    """"" (the dev cluster's shared SQLite file) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    return request.getfixturevalue("postgres_server").create_database()


def check_exactly_once(events) -> None:  # type: ignore[no-untyped-def]
    """Gap-free seqs; every frame received once and handled once; every (frame, step) done and reported once."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    received = [json.loads(e.payload_json)["frame_id"] for e in events if e.type == "frame.received"]
    handled = [json.loads(e.payload_json)["frame_id"] for e in events if e.type == "frame.handled"]
    assert Counter(received) == Counter(handled) and max(Counter(handled).values()) == 1
    steps = Counter((p["frame_seq"], p["key"]) for e in events if e.type == "step.completed"
                    for p in [json.loads(e.payload_json)] if p["authoritative"])
    assert steps and max(steps.values()) == 1
    progress = Counter((p["frame"], p["step"]) for e in events if e.type == "progress"
                       for p in [json.loads(e.payload_json)])
    assert max(progress.values()) == 1 and len(progress) == len(steps)


async def test_kill_9_of_the_executor_mid_run_completes_on_another_node_gap_free(dev_cluster, store_url):
    cluster = dev_cluster(nodes=3, agentd=True, runs_store=store_url, runs_config=RUNS_CONFIG)
    starter = RunClient(cluster.nodes[0].agentd.endpoint)
    consumer = RunClient([cluster.nodes[1].agentd.endpoint, cluster.nodes[2].agentd.endpoint])
    try:
        await starter.start("tasker", {"steps": 30, "delay": 0.05}, run_id="crash-run")
        await starter.append("crash-run", "f-2", "msg", {"steps": 5, "finish": True})
        seen: list = []

        async def consume() -> None:
            async for event in consumer.stream("crash-run"):
                seen.append(event)

        reader = asyncio.get_running_loop().create_task(consume())
        await async_wait_until(lambda: _progress(seen, 5), 30, what="the run made progress on node-1")
        assert (await consumer.get("crash-run")).executor.node_id == "node-1"
        cluster.kill(0)  # kill -9 node-1: its meshd and the agentd executing the run
        async with asyncio.timeout(90):
            await reader
        assert seen[-1].type == "run.completed"
        check_exactly_once(seen)
        types = [e.type for e in seen]
        assert types.count("run.executor_lost") == 1 and types.count("run.executor_acquired") == 2
        run = await consumer.get("crash-run")
        assert run.status == "completed" and run.counters.recoveries == 1
        assert json.loads(run.output_json) == {"frames": 2, "steps": 35}
        assert (await consumer.verify("crash-run")).ok
    finally:
        await starter.close()
        await consumer.close()


async def test_runs_of_a_killed_node_resume_spread_over_the_live_nodes(dev_cluster):
    cluster = dev_cluster(nodes=3, agentd=True, runs_config=RUNS_CONFIG)
    starter = RunClient(cluster.nodes[0].agentd.endpoint)
    survivors = RunClient([cluster.nodes[1].agentd.endpoint, cluster.nodes[2].agentd.endpoint])
    ids = [f"spread-{i}" for i in range(6)]
    try:
        for run_id in ids:
            await starter.start("tasker", {"steps": 40, "delay": 0.05, "finish": True}, run_id=run_id)

        async def all_working_on_node_1() -> bool:
            runs = [await starter.get(run_id) for run_id in ids]
            return all(r.executor.node_id == "node-1" and r.counters.steps >= 1 for r in runs)

        await async_wait_until(all_working_on_node_1, 30, what="six runs working on node-1")
        cluster.kill(0)  # kill -9 node-1: six runs lose their executor at once

        async def all_completed() -> bool:
            return all(r.status == "completed" for r in [await survivors.get(run_id) for run_id in ids])

        await async_wait_until(all_completed, 90, what="every run completed after node-1 died")
        resumed_on = Counter()
        for run_id in ids:
            events = [e async for e in survivors.stream(run_id, follow=False)]
            check_exactly_once(events)
            acquired = [json.loads(e.payload_json)["node_id"] for e in events if e.type == "run.executor_acquired"]
            assert acquired[0] == "node-1" and len(acquired) == 2, acquired
            resumed_on[acquired[1]] += 1
        # The janitor resumes each run on the least loaded live agentd: both survivors take three, not one six.
        assert resumed_on == {"node-2": 3, "node-3": 3}, resumed_on
    finally:
        await starter.close()
        await survivors.close()


async def test_graceful_shutdown_hands_the_run_over_without_a_recovery(dev_cluster):
    cluster = dev_cluster(nodes=2, agentd=True, runs_config=RUNS_CONFIG)
    client = RunClient([cluster.nodes[1].agentd.endpoint])
    try:
        await RunClient(cluster.nodes[0].agentd.endpoint).start("tasker", {"steps": 20, "delay": 0.05, "finish": True},
                                                                 run_id="handoff")
        seen: list = []

        async def consume() -> None:
            async for event in client.stream("handoff"):
                seen.append(event)

        reader = asyncio.get_running_loop().create_task(consume())
        await async_wait_until(lambda: _progress(seen, 3), 30, what="progress on node-1")
        cluster.nodes[0].agentd.proc.terminate()  # SIGTERM: the executor hands the run back
        async with asyncio.timeout(60):
            await reader
        types = [e.type for e in seen]
        assert "run.executor_released" in types and "run.executor_lost" not in types
        assert types[-1] == "run.completed"
        check_exactly_once(seen)
        assert (await client.get("handoff")).counters.recoveries == 0
    finally:
        await client.close()


async def test_a_deposed_executor_cannot_append(etcd_server, cluster_name, runs_store_url):
    client = EtcdClient([etcd_server.endpoint])
    store = open_store(runs_store_url)
    await store.open()
    try:
        await store.start(RunSpec("r1", "default", "tasker", "enqueue"), 1)
        first = RunLease(client, cluster_name, "r1", "node-1", "tasker", ttl=2)
        assert await first.acquire()
        await store.claim("r1", first.token, "node-1", first.lease_id, 2, 3)
        await store.append("r1", first.token, [NewEvent("progress", "1")], 3)
        second = RunLease(client, cluster_name, "r1", "node-2", "tasker", ttl=2)
        assert not await second.acquire()  # one executor per run: refused while the first holds it
        assert second.holder["node_id"] == "node-1" and second.holder["fencing_token"] == first.token
        await client.revoke(first.lease_id)  # the first executor's lease is gone (as after a partition)
        assert await second.acquire()
        assert second.token > first.token
        await store.claim("r1", second.token, "node-2", second.lease_id, 4, 3)
        with pytest.raises(ExecutorFenced):  # the deposed executor still believes it runs the run
            await store.append("r1", first.token, [NewEvent("progress", "2")], 5)
        await store.append("r1", second.token, [NewEvent("progress", "3")], 6)
        _, events = await store.read("r1", 0)
        assert [e.type for e in events][-3:] == ["run.executor_lost", "run.executor_acquired", "progress"]
        await second.release()
    finally:
        await store.close()
        await client.close()


async def test_a_tampered_event_fails_verify_naming_its_seq(dev_cluster, store_url, postgres_server, capsys):
    cluster = dev_cluster(nodes=1, agentd=True, runs_store=store_url, runs_config=RUNS_CONFIG)
    endpoint = cluster.nodes[0].agentd.endpoint
    async with RunClient(endpoint) as client:
        await client.start("tasker", {"steps": 3, "finish": True}, run_id="tamper")
        events = [e async for e in client.stream("tamper")]
        target = next(e for e in events if e.type == "progress")
    assert await asyncio.to_thread(meshctl, ["run", "verify", "tamper", "--agentd", endpoint]) == 0
    sql = "UPDATE events SET payload = '{\"frame\":\"input\",\"step\":99}' WHERE run_id = 'tamper' AND seq = %d"
    if store_url:
        postgres_server.psql(store_url.split("?")[0].rsplit("/", 1)[-1], sql % target.seq)
    else:
        db = sqlite3.connect(cluster.runs_store[len("sqlite://"):])
        with db:
            db.execute(sql % target.seq)
        db.close()
    capsys.readouterr()
    assert await asyncio.to_thread(meshctl, ["run", "verify", "tamper", "--agentd", endpoint, "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["ok"] is False and verdict["first_bad_seq"] == target.seq and "payload" in verdict["problem"]


async def _progress(seen: list, n: int) -> bool:
    return sum(1 for e in seen if e.type == "progress") >= n
