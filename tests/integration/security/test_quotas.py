"""Quotas that hold: max_agents under a race of spawns on two nodes, the refusal names the limit, and the
tenant's use shows in ``meshctl tenant usage`` and meshd's /metrics; max_instances on the coordinator.

On the secure dev cluster (tokens, mTLS): the tenant's operator spawns through both nodes' agentd; the
admin sets the quota. Exactness comes from etcd (one conditioned transaction per unit, agentd/quotas.py),
so the race is across processes, not just coroutines of one.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import uuid

import httpx
import pytest

from agentd.quotas import ORPHAN_MS, RunQuota
from mabeam.dev.cluster import DevCluster
from mabeam.dev.testing import async_wait_until
from mabeam.errors import ServiceError
from mabeam.etcd.client import EtcdClient
from mabeam.etcd.embedded import EmbeddedEtcd
from mabeam.security.quota import write_quota
from mabeam.v1 import mesh_pb2
from mabeam_client.agents import AgentClient
from mabeam_client.coordinator import CoordinatorClient
from mabeam_client.errors import ResourceExhausted
from mabeam_client.mesh import MeshClient
from mabeam_client.runs import RunClient

LIMIT = 30
FIRST = LIMIT - 10  # then 50 spawns race for the last 10 slots
RACERS = 50


async def _used(mesh: MeshClient, tenant: str, quota: str = "max_agents") -> float:
    usage = await mesh.tenant_usage(tenant)
    return next(item.used for item in usage.usage if item.quota == quota)


async def test_fifty_spawns_race_for_the_last_ten_slots_and_none_overshoots(secure_cluster: DevCluster) -> None:
    security = secure_cluster.security
    assert security is not None
    tenant = f"q{uuid.uuid4().hex[:8]}"
    node = secure_cluster.nodes[0]
    one, two = (n.agentd.endpoint for n in secure_cluster.nodes if n.agentd)
    operator = security.client(tenant=tenant, roles=["operator"], subject="ops")
    async with MeshClient(node.endpoint, security=security.client()) as admin, \
            AgentClient(one, security=operator) as near, AgentClient(two, security=operator) as far:
        await admin.set_tenant_quota(mesh_pb2.TenantQuota(tenant=tenant, max_agents=LIMIT))
        for i in range(FIRST):
            await (near if i % 2 else far).spawn("counter", {"start": i}, child_id=f"first-{i}")

        async def spawn(i: int) -> object:
            client = near if i % 2 else far
            try:
                return await client.spawn("counter", {"start": i}, child_id=f"racer-{i}")
            except ResourceExhausted as refused:
                return refused

        outcomes = await asyncio.gather(*(spawn(i) for i in range(RACERS)))
        refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
        started = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(started) == LIMIT - FIRST, f"{len(started)} of {RACERS} racers started: the quota overshot"
        assert len(refused) == RACERS - len(started)
        assert {(r.reason, r.metadata.get("quota"), r.metadata.get("limit")) for r in refused} == \
            {("QUOTA_EXCEEDED", "max_agents", str(LIMIT))}
        assert f"= {LIMIT}" in refused[0].message
        near_agents, far_agents = await near.list("counter"), await far.list("counter")
        assert len(near_agents) + len(far_agents) == LIMIT

        # The use, cluster-wide, in the API, in meshctl and on /metrics.
        await _wait_used(admin, tenant, LIMIT)
        env = {**os.environ, **security.env(tenant=tenant, roles=["reader"])}
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "mabeam_client.cli", "--endpoint",
                                      node.endpoint, "--json", "tenant", "usage"], env=env, capture_output=True,
                                      text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        usage = {item["quota"]: item for item in json.loads(out.stdout)["usage"]}
        assert (usage["max_agents"]["used"], usage["max_agents"]["limit"]) == (LIMIT, LIMIT)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://{node.metrics_address}/metrics")).text
        assert f'mabeam_tenant_usage{{quota="max_agents",tenant="{tenant}"}} {float(LIMIT)}' in metrics
        assert f'mabeam_tenant_quota_limit{{quota="max_agents",tenant="{tenant}"}} {float(LIMIT)}' in metrics

        # A stopped agent gives its slot back: one more starts, the next is refused again.
        await near.stop(near_agents[0].agent_id)
        await _wait_used(admin, tenant, LIMIT - 1)
        await near.spawn("counter", {"start": 0}, child_id="after-stop")
        try:
            await far.spawn("counter", {"start": 0}, child_id="one-too-many")
            raise AssertionError("a spawn past the limit started")
        except ResourceExhausted as error:
            assert error.reason == "QUOTA_EXCEEDED"


async def _wait_used(mesh: MeshClient, tenant: str, expected: int, quota: str = "max_agents") -> None:
    """Until the tenant's use of ``quota`` reads ``expected`` (meshd's view follows etcd's watch)."""

    async def reached() -> bool:
        return await _used(mesh, tenant, quota) == expected

    await async_wait_until(reached, 20, what=f"{quota} use of {tenant} reads {expected}")


async def test_max_instances_refuses_the_instance_past_the_limit_and_a_cancelled_one_frees_its_slot(
        secure_cluster: DevCluster) -> None:
    security = secure_cluster.security
    assert security is not None
    tenant = f"q{uuid.uuid4().hex[:8]}"
    endpoints = [n.coordinator.endpoint for n in secure_cluster.nodes if n.coordinator]
    config = {"pricing": "second", "reserve": 1, "closes_at": 4_000_000_000_000}
    async with MeshClient(secure_cluster.nodes[0].endpoint, security=security.client()) as admin, \
            CoordinatorClient(endpoints, security=security.client(tenant=tenant, roles=["operator"])) as ops:
        await admin.set_tenant_quota(mesh_pb2.TenantQuota(tenant=tenant, max_instances=2))
        first = await ops.create_auction("sealed", config)
        await ops.create_auction("sealed", config)
        with pytest.raises(ResourceExhausted) as refused:
            await ops.create_auction("sealed", config)
        assert (refused.value.reason, refused.value.metadata["quota"], refused.value.metadata["limit"]) == \
            ("QUOTA_EXCEEDED", "max_instances", "2")
        assert len([i for i in await ops.list_instances() if i.state == "open"]) == 2
        await _wait_used(admin, tenant, 2, "max_instances")  # open instances, in GetTenantUsage
        await ops.cancel(first.id)
        await _wait_used(admin, tenant, 1, "max_instances")
        await ops.create_auction("sealed", config)  # the cancelled one's slot
        with pytest.raises(ResourceExhausted):
            await ops.create_auction("sealed", config)


RUNS_LIMIT = 5
RUNS_FIRST = 2  # then 12 StartRuns on both agentds race for the last 3 slots


async def test_concurrent_runs_race_for_the_last_slots_a_replay_counts_once_and_an_ended_run_frees_its_slot(
        secure_cluster: DevCluster) -> None:
    security = secure_cluster.security
    assert security is not None
    tenant = f"q{uuid.uuid4().hex[:8]}"
    agentds = [n.agentd for n in secure_cluster.nodes if n.agentd]
    operator = security.client(tenant=tenant, roles=["operator"], subject="ops")
    async with MeshClient(secure_cluster.nodes[0].endpoint, security=security.client()) as admin, \
            RunClient(agentds[0].endpoint, security=operator) as near, \
            RunClient(agentds[1].endpoint, security=operator) as far:
        await admin.set_tenant_quota(mesh_pb2.TenantQuota(tenant=tenant, max_concurrent_runs=RUNS_LIMIT))
        first = [await near.start("tasker", run_id=f"{tenant}-first-{i}") for i in range(RUNS_FIRST)]
        again = await far.start("tasker", run_id=first[0].run.run_id)  # a replay: the same run, no new slot
        assert not again.created

        async def start(i: int) -> object:
            try:
                return await (near if i % 2 else far).start("tasker", run_id=f"{tenant}-racer-{i}")
            except ResourceExhausted as refused:
                return refused

        outcomes = await asyncio.gather(*(start(i) for i in range(12)))
        refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
        assert len(refused) == 12 - (RUNS_LIMIT - RUNS_FIRST), f"{12 - len(refused)} racers started: overshot"
        assert {(r.reason, r.metadata.get("quota"), r.metadata.get("limit"), r.metadata.get("used"))
                for r in refused} == {("QUOTA_EXCEEDED", "max_concurrent_runs", str(RUNS_LIMIT), str(RUNS_LIMIT))}
        runs, _ = await near.list()
        assert len([r for r in runs if r.status not in ("completed", "failed", "canceled")]) == RUNS_LIMIT
        await _wait_used(admin, tenant, RUNS_LIMIT, "max_concurrent_runs")

        # The HTTP face answers 429 with the reason and the limit; nothing is created.
        cert, key = security.certs["client"]
        tls = ssl.create_default_context(cafile=str(security.ca))
        tls.load_cert_chain(str(cert), str(key))
        headers = {"Authorization": f"Bearer {security.token(tenant, ['operator'])}"}
        async with httpx.AsyncClient(base_url=f"https://{agentds[1].http_endpoint}", verify=tls) as http:
            answer = await http.post("/v1/runs", json={"run_id": f"{tenant}-http", "agent_type": "tasker"},
                                     headers=headers)
            assert answer.status_code == 429, answer.text
            error = answer.json()["error"]
            assert (error["reason"], error["metadata"]["quota"], error["metadata"]["limit"]) == \
                ("QUOTA_EXCEEDED", "max_concurrent_runs", str(RUNS_LIMIT))
        assert f"{tenant}-http" not in {r.run_id for r in (await near.list())[0]}

        # A run that ends gives its slot back: one more starts, the next is refused again.
        await near.append(first[1].run.run_id, "done", "finish", {})
        await _wait_used(admin, tenant, RUNS_LIMIT - 1, "max_concurrent_runs")
        await far.start("tasker", run_id=f"{tenant}-after-end")
        with pytest.raises(ResourceExhausted):
            await near.start("tasker", run_id=f"{tenant}-one-too-many")


async def test_max_mailbox_refuses_a_larger_mailbox_and_lowers_the_default(secure_cluster: DevCluster) -> None:
    security = secure_cluster.security
    assert security is not None
    tenant = f"q{uuid.uuid4().hex[:8]}"
    agentd = next(n.agentd for n in secure_cluster.nodes if n.agentd)
    async with MeshClient(secure_cluster.nodes[0].endpoint, security=security.client()) as admin, \
            AgentClient(agentd.endpoint, security=security.client(tenant=tenant, roles=["operator"])) as agents:
        await admin.set_tenant_quota(mesh_pb2.TenantQuota(tenant=tenant, max_mailbox=50))
        with pytest.raises(ResourceExhausted) as refused:
            await agents.spawn("counter", {"start": 0}, child_id="big", mailbox_capacity=51)
        assert (refused.value.reason, refused.value.metadata["quota"], refused.value.metadata["limit"],
                refused.value.metadata["used"]) == ("QUOTA_EXCEEDED", "max_mailbox", "50", "51")
        assert await agents.list() == []
        assert (await agents.spawn("counter", {"start": 0}, child_id="asked", mailbox_capacity=20)).mailbox_capacity \
            == 20
        assert (await agents.spawn("counter", {"start": 0}, child_id="default")).mailbox_capacity == 50


async def test_run_units_whose_release_was_missed_are_swept_by_the_start_that_finds_the_limit(
        etcd_server: EmbeddedEtcd, cluster_name: str) -> None:
    """A run that ended without giving its unit back (a crash between the two), and a unit whose run was
    never created (a StartRun that died after taking it), stop counting at the next start at the limit."""
    etcd = EtcdClient([etcd_server.endpoint])
    runs: dict[str, tuple[str, bool]] = {}
    now = [10_000_000]

    async def status(run_id: str) -> tuple[str, bool] | None:
        return runs.get(run_id)

    quota = RunQuota(etcd, cluster_name, status, now_ms=lambda: now[0])
    try:
        await write_quota(etcd, cluster_name, mesh_pb2.TenantQuota(tenant="t", max_concurrent_runs=2))
        for run_id in ("a", "b"):
            await quota.acquire("t", run_id, "a run")
            runs[run_id] = ("t", False)
        with pytest.raises(ServiceError) as refused:
            await quota.acquire("t", "c", "a run")
        assert (refused.value.reason, refused.value.metadata["limit"]) == ("QUOTA_EXCEEDED", "2")
        runs["a"] = ("t", True)  # ended; its unit was not given back
        await quota.acquire("t", "c", "a run")  # "c" is never created
        assert set(await quota.counted.holders("t")) == {"b", "c"}
        with pytest.raises(ServiceError):
            await quota.acquire("t", "d", "a run")  # "c" may still be being created: it counts
        now[0] += ORPHAN_MS + 1
        await quota.acquire("t", "d", "a run")
        assert set(await quota.counted.holders("t")) == {"b", "d"}
    finally:
        await etcd.close()
