"""The secure scene of ``make demo``: tokens, mTLS, tenants and a quota on a second, secure dev cluster.

Two nodes started with ``DevCluster(secure=True)`` (what ``mabeam up --secure`` runs: token keys, a dev CA
and per-node certificates, CURVE on the data plane). The scene shows a call without a token refused, a
plaintext client refused, two tenants that each have an agent named ``ledger`` and cannot see each
other's, a quota that refuses the agent past its limit with the limit in the error, the tenant's usage,
and the audit counters on /metrics.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from mabeam.dev.cluster import DevCluster
from mabeam.v1 import mesh_pb2
from mabeam_client.agents import AgentClient
from mabeam_client.errors import MabeamError
from mabeam_client.mesh import MeshClient
from mabeam_client.security import ClientSecurity

console = Console()


def secure_scene(step: Callable[[str], None]) -> None:
    """Start the secure cluster, run the scene, stop it."""
    step("20. security: a second cluster with tokens, mTLS and CURVE (what `mabeam up --secure` runs)")
    with DevCluster(nodes=2, lease_ttl=2, agentd=True, secure=True) as cluster:
        asyncio.run(_scene(cluster, step))


async def _refused(what: str, call: object) -> None:
    try:
        await call  # type: ignore[misc]
    except MabeamError as error:
        console.print(f"{what}: [red]{type(error).__name__}[/red] {error.reason or ''} — {error.message[:110]}")
    else:
        raise AssertionError(f"{what} was not refused")


async def _scene(cluster: DevCluster, step: Callable[[str], None]) -> None:
    security = cluster.security
    assert security is not None
    node = cluster.nodes[0]
    assert node.agentd is not None
    console.print(f"meshd {node.endpoint} serves gRPC over TLS with client certificates; every call needs a "
                  f"bearer token signed by the cluster's key (kid 'dev')")
    no_token = ClientSecurity(tls_ca=str(security.ca), tls_cert=str(security.certs["client"][0]),
                              tls_key=str(security.certs["client"][1]))
    async with MeshClient(node.endpoint, security=no_token, timeout=5) as mesh:
        await _refused("a call with the client certificate but no token", mesh.ping())
    async with MeshClient(node.endpoint, security=ClientSecurity(), timeout=5) as mesh:
        await _refused("a plaintext client", mesh.ping())

    step("21. tenants: acme and globex each have an agent named 'ledger'; neither sees the other's")
    acme = security.client(tenant="acme", roles=["operator"], subject="alice")
    globex = security.client(tenant="globex", roles=["operator"], subject="bob")
    async with MeshClient(node.endpoint, security=security.client()) as admin:
        await admin.set_tenant_quota(mesh_pb2.TenantQuota(tenant="acme", max_agents=3))
        await admin.set_tenant_quota(mesh_pb2.TenantQuota(tenant="globex"))
    async with AgentClient(node.agentd.endpoint, security=acme) as a, \
            AgentClient(node.agentd.endpoint, security=globex) as g:
        await a.spawn("counter", {"start": 100}, name="ledger")
        await g.spawn("counter", {"start": 7}, name="ledger")
        await a.cast("ledger", 5)
        console.print(f"acme's ledger: {await _settled(a, 105)}, globex's ledger: {await g.call('ledger', 'get')} "
                      "(same name, two tenants, two worker processes)")
        tree = await a.tree()
        console.print(f"acme's supervision subtree: workers {sorted({t.worker for t in tree})} — globex's agents "
                      "are not in it")
        await _refused("acme asks for globex's agents (tenant field = globex)", a.list(tenant="globex"))

        step("22. a quota that holds: acme may run 3 agents; the 4th is refused with the limit")
        await a.spawn("counter", {"start": 0})
        await a.spawn("counter", {"start": 0})
        await _refused("acme's 4th agent", a.spawn("counter", {"start": 0}))
    async with MeshClient(node.endpoint, security=security.client(tenant="acme", roles=["reader"])) as reader:
        usage = await reader.tenant_usage()
    table = Table("quota", "used", "limit", title="meshctl tenant usage (token of acme, role reader)")
    for item in usage.usage:
        if item.limit or item.used:
            table.add_row(item.quota, f"{item.used:g}", f"{item.limit:g}" if item.limit else "unlimited")
    console.print(table)
    metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(
        f"http://{node.agentd.metrics_address}/metrics", timeout=10).read().decode())
    console.print("agentd's audit on /metrics:")
    for line in metrics.splitlines():
        if line.startswith(("mabeam_auth_refused_total{", "mabeam_admin_cross_tenant_total{")):
            console.print(f"  {line}")


async def _settled(client: AgentClient, value: int) -> object:
    """The counter's value once the cast is applied (casts are asynchronous)."""
    from mabeam.dev.testing import async_wait_until

    async def reached() -> object:
        got = await client.call("ledger", "get")
        return got if got == value else None

    return await async_wait_until(reached, 10, interval=0.05, what="the cast applied")
