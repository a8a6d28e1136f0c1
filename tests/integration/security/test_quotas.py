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
import subprocess
import sys
import uuid

import httpx
import pytest

from mabeam.dev.cluster import DevCluster
from mabeam.dev.testing import async_wait_until
from mabeam.v1 import mesh_pb2
from mabeam_client.agents import AgentClient
from mabeam_client.coordinator import CoordinatorClient
from mabeam_client.errors import ResourceExhausted
from mabeam_client.mesh import MeshClient

LIMIT = 30
FIRST = LIMIT - 10  # then 50 spawns race for the last 10 slots
RACERS = 50


async def _used(mesh: MeshClient, tenant: str) -> float:
    usage = await mesh.tenant_usage(tenant)
    return next(item.used for item in usage.usage if item.quota == "max_agents")


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


async def _wait_used(mesh: MeshClient, tenant: str, expected: int) -> None:
    """Until the tenant's max_agents use reads ``expected`` (meshd's view follows etcd's watch)."""

    async def reached() -> bool:
        return await _used(mesh, tenant) == expected

    await async_wait_until(reached, 20, what=f"max_agents use of {tenant} reads {expected}")


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
        await ops.cancel(first.id)
        await ops.create_auction("sealed", config)  # the cancelled one's slot
        with pytest.raises(ResourceExhausted):
            await ops.create_auction("sealed", config)
