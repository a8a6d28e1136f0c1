"""A tenant's max_mailbox quota bounds the mailboxes meshd opens for it (Subscribe, AttachAgent endpoints)."""

from __future__ import annotations

from mabeam.dataplane.attach import AttachedEndpoint
from mabeam.security.quota import RateLimiter
from mabeam.v1 import mesh_pb2
from meshd.dataplane import DataPlane


class _Quotas:
    """A fixed quota book (meshd's follows etcd)."""

    def __init__(self, *quotas: mesh_pb2.TenantQuota) -> None:
        self.quotas = {q.tenant: q for q in quotas}


async def test_an_endpoint_of_a_tenant_is_lowered_to_its_max_mailbox(pair: tuple[DataPlane, DataPlane]) -> None:
    a, _ = pair
    a.router.limiter = RateLimiter(_Quotas(mesh_pb2.TenantQuota(tenant="acme", max_mailbox=8)))
    try:
        assert a.open_endpoint("asked-more", "acme", max_pending=100).max_pending == 8
        assert a.open_endpoint("asked-less", "acme", max_pending=5).max_pending == 5
        assert a.open_endpoint("default", "acme").max_pending == 8
        assert a.open_endpoint("other", "globex", max_pending=100).max_pending == 100  # no quota, no bound
    finally:
        a.router.limiter = None


async def test_an_attached_endpoint_of_a_tenant_is_lowered_to_its_max_mailbox(
        pair: tuple[DataPlane, DataPlane]) -> None:
    a, _ = pair
    a.router.limiter = RateLimiter(_Quotas(mesh_pb2.TenantQuota(tenant="acme", max_mailbox=8)))
    bounded = await AttachedEndpoint.connect(a.attach_address, "bounded", "acme", max_pending=4096)
    free = await AttachedEndpoint.connect(a.attach_address, "free", "globex", max_pending=4096)
    try:
        assert a.endpoints[("acme", "bounded")].limit == 8
        assert a.endpoints[("globex", "free")].limit > 8  # no quota, no bound
    finally:
        await bounded.close()
        await free.close()
        a.router.limiter = None
