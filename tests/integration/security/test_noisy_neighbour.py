"""A tenant flooding meshd's attach socket past its rate quota, ignoring the throttle, through a real meshd:
meshd mutes it, another tenant's calls through the same meshd keep answering, and the node keeps its etcd
session (a flooded meshd once lost it: docs/security.md "Noisy neighbours")."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mabeam.dataplane.attach import AttachedEndpoint
from mabeam.dev.cluster import DevCluster
from mabeam.dev.testing import async_wait_until
from mabeam.v1 import mesh_pb2
from mabeam_client.mesh import MeshClient
from meshd.dataplane.testing import RawFlooder

TTL = 2


@pytest.fixture
def node(etcd_server) -> Iterator[DevCluster]:  # type: ignore[no-untyped-def]
    """One meshd with a short lease (a starved keepalive loses the session within seconds)."""
    cluster = DevCluster(1, etcd=etcd_server.endpoint, cluster=f"nn{uuid.uuid4().hex[:8]}", lease_ttl=TTL)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def _metric(address: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def test_a_raw_flood_past_the_quota_is_muted_and_the_victim_and_the_etcd_session_are_fine(
        node: DevCluster) -> None:
    meshd = node.nodes[0]
    async with MeshClient(meshd.endpoint) as mesh:
        await mesh.set_tenant_quota(mesh_pb2.TenantQuota(tenant="noisy", max_messages_per_second=1000))

        async def applied() -> bool:
            return (await mesh.tenant_usage("noisy")).quota.max_messages_per_second == 1000

        await async_wait_until(applied, 20, what="meshd follows the quota")
    sink = await AttachedEndpoint.connect(meshd.attach_address, "sink", "noisy", max_pending=1 << 16)
    victim = await AttachedEndpoint.connect(meshd.attach_address, "victim", "quiet")
    echo = await AttachedEndpoint.connect(meshd.attach_address, "echo", "quiet")

    async def serve() -> None:
        while True:
            message = await echo.receive()
            echo.reply_nowait(message, bytes(message.payload))

    server = asyncio.create_task(serve())
    raw = RawFlooder(meshd.attach_address, "noisy", sink.ref.to_proto())
    raw.thread.start()
    try:
        def muted() -> bool:
            return _metric(meshd.metrics_address, "mabeam_dataplane_rejected_frames_total", channel="attach",
                           reason="muted") > 0

        await async_wait_until(muted, 30, what="meshd mutes the raw flooder")
        # Three lease TTLs of the victim's calls under the flood: each answers (a generous bound per call).
        calls = 0
        until = time.monotonic() + 3 * TTL
        while time.monotonic() < until:
            assert (await victim.call(echo.ref, b"ping", timeout=5)).payload == b"ping"
            calls += 1
        assert calls > 0 and raw.batches > 0
        assert _metric(meshd.metrics_address, "mabeam_session_losses_total") == 0
    finally:
        raw.close()
        server.cancel()
        for endpoint in (sink, victim, echo):
            await endpoint.close()
