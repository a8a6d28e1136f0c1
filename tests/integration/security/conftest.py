"""Security fixtures: a secure dev cluster (tokens, mTLS, CURVE) per test module, tenants, credentials."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from mabeam.dev.cluster import DevCluster

TENANTS = ("acme", "globex")


@pytest.fixture(scope="module")
def secure_cluster(etcd_server) -> Iterator[DevCluster]:  # type: ignore[no-untyped-def]
    """Two nodes (meshd, agentd, coordinator each) with tokens, mTLS and CURVE; tenants acme and globex exist."""
    import asyncio

    from mabeam.v1 import mesh_pb2
    from mabeam_client.mesh import MeshClient

    cluster = DevCluster(2, etcd=etcd_server.endpoint, cluster=f"s{uuid.uuid4().hex[:10]}",
                         lease_ttl=2, agentd=True, coordinator=True, secure=True)
    try:
        cluster.start()
        assert cluster.security is not None

        async def tenants() -> None:
            async with MeshClient(cluster.nodes[0].endpoint, security=cluster.security.client()) as mesh:
                for tenant in TENANTS:
                    await mesh.set_tenant_quota(mesh_pb2.TenantQuota(tenant=tenant))

        asyncio.run(tenants())
        yield cluster
    finally:
        cluster.close()
