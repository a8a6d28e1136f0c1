"""Tenants see and reach only their own: names, groups, agents, instances, variables, ledger, runs, data plane.

Every cross-tenant attempt is made with a valid token of another tenant and a well-formed request; it is
refused (NOT_FOUND for another tenant's thing found by id or name, exactly as for one that does not exist)
and the owner's state is checked unchanged afterwards. An admin reaches any tenant, and that is audited.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from typing import Any

import httpx
import pytest

from mabeam.dev.cluster import DevCluster
from mabeam.v1 import dataplane_pb2, mesh_pb2, mesh_pb2_grpc
from mabeam_client.agents import AgentClient
from mabeam_client.coordinator import CoordinatorClient
from mabeam_client.errors import AlreadyExists, MabeamError, NotFound, PermissionDenied, translate
from mabeam_client.external import ExternalAgent
from mabeam_client.mesh import MeshClient
from mabeam_client.runs import RunClient
from mabeam_client.security import ClientSecurity, open_channel


def creds(cluster: DevCluster, tenant: str, role: str = "operator") -> ClientSecurity:
    assert cluster.security is not None
    return cluster.security.client(tenant=tenant, roles=[role], subject=f"{tenant}-{role}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def expect_not_found(call: Any) -> MabeamError:
    with pytest.raises(NotFound) as caught:
        await call
    return caught.value


async def test_names_and_groups(secure_cluster: DevCluster) -> None:
    node = secure_cluster.nodes[0].endpoint
    name, group = unique("svc"), unique("team")
    async with MeshClient(node, security=creds(secure_cluster, "acme", "agent")) as acme, \
            MeshClient(node, security=creds(secure_cluster, "globex", "agent")) as globex:
        await acme.register_name(name, "a1")
        await acme.join_group(group, "a1")
        await expect_not_found(globex.lookup(name))
        assert name not in {e.name for e in await globex.names()}
        assert await globex.group_members(group) == []
        assert group not in {g.group for g in await globex.groups()}
        with pytest.raises(PermissionDenied):  # naming acme's tenant is for admins only
            await globex.lookup(name, tenant="acme")
        # The same name in globex is globex's own; removing it leaves acme's alone.
        await globex.register_name(name, "g1")
        await globex.unregister_name(name)
        assert (await acme.lookup(name)).target.agent_id == "a1"
        assert [m.member.agent_id for m in await acme.group_members(group)] == ["a1"]


async def test_agents_and_their_subtrees(secure_cluster: DevCluster) -> None:
    one, two = (n.agentd.endpoint for n in secure_cluster.nodes if n.agentd)
    name = unique("tally")
    async with AgentClient(one, security=creds(secure_cluster, "acme")) as acme, \
            AgentClient(one, security=creds(secure_cluster, "globex")) as globex, \
            AgentClient(two, security=creds(secure_cluster, "acme")) as acme_far, \
            AgentClient(two, security=creds(secure_cluster, "globex")) as globex_far:
        spawned = await acme.spawn("counter", {"start": 1}, name=name)
        assert spawned.tenant == "acme" and spawned.worker == "w@acme"
        await expect_not_found(globex.get(name))
        await expect_not_found(globex.call(name, "get"))
        await globex.cast(name, 5)  # one-way: handed to the mesh, which finds no such name in globex
        await expect_not_found(globex.stop(name))
        assert name not in {a.name for a in await globex.list()}
        # acme's subtree is its own worker's tree; globex's trees do not show it.
        trees = await acme.tree()
        assert trees and all(t.tenant == "acme" and t.worker.endswith("@acme") for t in trees)
        assert name in json.dumps([str(t) for t in trees])
        assert name not in json.dumps([str(t) for t in await globex.tree()])
        # globex takes the same name for an agent of its own; each tenant reaches its own, across nodes too.
        await globex.spawn("counter", {"start": 100}, name=name)
        assert await acme.call(name, "get") == 1 and await globex.call(name, "get") == 100

        async def reaches(client: AgentClient, expected: int) -> bool:
            try:
                return bool(await client.call(name, "get") == expected)
            except NotFound:
                return False  # the name is not in node-2's cache yet

        for client, expected in ((acme_far, 1), (globex_far, 100)):
            for _ in range(200):
                if await reaches(client, expected):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("node-2 never reached the tenant's own agent by name")
        assert (await acme.get(name)).restarts == 0


async def test_instances_variables_and_ledger(secure_cluster: DevCluster) -> None:
    endpoints = [n.coordinator.endpoint for n in secure_cluster.nodes if n.coordinator]
    async with CoordinatorClient(endpoints, security=creds(secure_cluster, "acme")) as acme, \
            CoordinatorClient(endpoints, security=creds(secure_cluster, "globex")) as globex:
        auction = await acme.create_auction("sealed", {"pricing": "second", "reserve": 1,
                                                       "closes_at": 4_000_000_000_000})
        missing = await expect_not_found(globex.get_auction(unique("nope")))
        hidden = await expect_not_found(globex.get_auction(auction.id))
        assert hidden.reason == missing.reason and str(hidden).replace(auction.id, "X") == \
            str(missing).replace(str(missing).split("'")[1], "X")  # worded exactly like a missing one
        await expect_not_found(globex.submit_bid(auction.id, {"type": "bid", "bidder": "g", "amount": 5}))
        await expect_not_found(globex.cancel(auction.id))
        await expect_not_found(globex.close_instance(auction.id))
        with pytest.raises(NotFound):
            async for _ in globex.watch(auction.id):
                break
        assert auction.id not in {i.id for i in await globex.list_instances()}
        assert (await acme.get_auction(auction.id)).state == "open"

        variable = unique("temp")
        await acme.create_variable(variable, {"type": "number"}, 0.5)
        await expect_not_found(globex.get_variable(variable))
        await globex.create_variable(variable, {"type": "number"}, 9.0)  # its own, same name
        await globex.set_variable(variable, 10.0, 1)
        assert (await acme.get_variable(variable)).value == 0.5

        await acme.deposit("alice", 100)
        assert (await globex.balance("alice")).available == 0
        with pytest.raises(MabeamError):
            await globex.transfer("alice", "mallory", 50)
        assert (await acme.balance("alice")).available == 100


async def test_runs_over_grpc_and_http(secure_cluster: DevCluster) -> None:
    assert secure_cluster.security is not None
    endpoints = [n.agentd.endpoint for n in secure_cluster.nodes if n.agentd]
    run_id = unique("run")
    async with RunClient(endpoints, security=creds(secure_cluster, "acme")) as acme, \
            RunClient(endpoints, security=creds(secure_cluster, "globex")) as globex:
        await acme.start("tasker", {"steps": 1}, run_id=run_id)
        await expect_not_found(globex.get(run_id))
        await expect_not_found(globex.append(run_id, "f1", "input", {"steps": 1}))
        await expect_not_found(globex.cancel(run_id))
        with pytest.raises(NotFound):
            async for _ in globex.stream(run_id, follow=False):
                break
        runs, _ = await globex.list()
        assert run_id not in {r.run_id for r in runs}
        with pytest.raises(AlreadyExists) as taken:
            await globex.start("tasker", {"steps": 1}, run_id=run_id)
        assert "acme" not in str(taken.value) and "taken" in str(taken.value)
        assert not (await acme.get(run_id)).cancel_requested

    # The HTTP face: the same token, the same rules (client certificate required over TLS).
    node = next(n.agentd for n in secure_cluster.nodes if n.agentd)
    assert node is not None and node.http_endpoint
    cert, key = secure_cluster.security.certs["client"]
    tls = ssl.create_default_context(cafile=str(secure_cluster.security.ca))
    tls.load_cert_chain(str(cert), str(key))
    async with httpx.AsyncClient(base_url=f"https://{node.http_endpoint}", verify=tls) as http:
        url = f"/v1/runs/{run_id}"
        assert (await http.get(url)).status_code == 401
        globex_token = secure_cluster.security.token("globex", ["reader"])
        answer = await http.get(url, headers={"Authorization": f"Bearer {globex_token}"})
        assert answer.status_code == 404 and answer.json()["error"]["reason"] == "RUN_NOT_FOUND"
        reader = secure_cluster.security.token("acme", ["reader"])
        answer = await http.post(f"{url}/cancel", headers={"Authorization": f"Bearer {reader}"}, json={})
        assert answer.status_code == 403 and answer.json()["error"]["reason"] == "ROLE_REQUIRED"
        answer = await http.get(url, headers={"Authorization": f"Bearer {reader}"})
        assert answer.status_code == 200 and answer.json()["tenant"] == "acme"
        answer = await http.get("/v1/runs?tenant=acme", headers={"Authorization": f"Bearer {globex_token}"})
        assert answer.status_code == 403 and answer.json()["error"]["reason"] == "TENANT_FORBIDDEN"


async def test_data_plane_sends(secure_cluster: DevCluster) -> None:
    node, far = secure_cluster.nodes[0], secure_cluster.nodes[1]
    inbox = unique("inbox")
    got: list[Any] = []

    async def received(msg: Any, incoming: Any) -> None:
        got.append(msg)

    acme_agent = ExternalAgent(node.endpoint, names=[inbox], on_cast=received,
                               security=creds(secure_cluster, "acme", "agent"))
    globex_agent = ExternalAgent(far.endpoint, security=creds(secure_cluster, "globex", "agent"))
    acme_sender = ExternalAgent(far.endpoint, security=creds(secure_cluster, "acme", "agent"))
    async with acme_agent, globex_agent, acme_sender:
        ref = acme_agent.ref
        assert ref is not None and ref.tenant == "acme"
        # Another tenant's agent, on another node, cannot reach acme's by name...
        await expect_not_found(globex_agent.call(inbox, "hello", timeout=2))
        # ...nor through the gRPC face, by name or by address, nor by claiming acme's tenant.
        channel = open_channel(node.endpoint, creds(secure_cluster, "globex", "agent"))
        stub = mesh_pb2_grpc.MeshServiceStub(channel)
        try:
            for request in (dataplane_pb2.SendRequest(to_name=inbox, payload=b"by name"),
                            dataplane_pb2.SendRequest(to_agent=ref, payload=b"by address")):
                with pytest.raises(Exception) as caught:
                    await stub.Send(request)
                assert type(translate(caught.value)).__name__ == "NotFound"
            with pytest.raises(Exception) as caught:
                await stub.Call(dataplane_pb2.CallRequest(to_name=inbox, payload=b"call", timeout_ms=2000))
            assert type(translate(caught.value)).__name__ == "NotFound"
            with pytest.raises(Exception) as caught:
                await stub.Send(dataplane_pb2.SendRequest(tenant="acme", to_name=inbox, payload=b"spoof"))
            assert translate(caught.value).reason == "TENANT_FORBIDDEN"
        finally:
            await channel.close()
        # acme's own agent on the other node gets through (the name resolves in acme's tenant there).
        for _ in range(200):
            try:
                await acme_sender.cast(inbox, "own")
                break
            except NotFound:
                await asyncio.sleep(0.05)  # node-2's cache has not seen the name yet
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.05)
        assert got == ["own"]


async def test_admin_acts_in_any_tenant_and_is_audited(secure_cluster: DevCluster) -> None:
    assert secure_cluster.security is not None
    node = secure_cluster.nodes[0]
    name = unique("adm")
    async with MeshClient(node.endpoint, security=creds(secure_cluster, "acme", "agent")) as acme, \
            MeshClient(node.endpoint, security=secure_cluster.security.client()) as admin:
        await acme.register_name(name, "a9")
        assert (await admin.lookup(name, tenant="acme")).target.agent_id == "a9"
        with pytest.raises(PermissionDenied):
            await acme.set_tenant_quota(mesh_pb2.TenantQuota(tenant="acme", max_agents=1000))
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"http://{node.metrics_address}/metrics")).text
    assert 'mabeam_admin_cross_tenant_total{method="/mabeam.v1.MeshService/Lookup",target_tenant="acme",' \
           'tenant="default"}' in metrics
    assert 'mabeam_auth_refused_total{method="/mabeam.v1.MeshService/SetTenantQuota",reason="ROLE_REQUIRED",' \
           'tenant="acme"}' in metrics
