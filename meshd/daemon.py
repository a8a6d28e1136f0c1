"""The meshd process: config → gRPC server (MeshService, health, reflection) → metrics → join the cluster.

Health: service ``""`` and ``mabeam.v1.MeshService`` are SERVING once the node
has joined; service ``etcd`` is NOT_SERVING while etcd is unreachable (cached
lookups keep working meanwhile). SIGTERM/SIGINT leave the cluster at once by
revoking the node's lease. What every daemon does around this (the command
line, config, logging, the gRPC server, /metrics, signals, the ready line,
systemd) is :mod:`mabeam.daemon`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mabeam.daemon import Serving
from mabeam.dataplane.errors import DataPlaneError
from mabeam.security.quota import RateLimiter
from mabeam.security.server import InsecureBindError, check_bind, is_loopback
from mabeam.startup import StartupError
from mabeam.v1 import mesh_pb2, mesh_pb2_grpc
from meshd.config import MeshdConfig
from meshd.dataplane import DataPlane
from meshd.dataplane.metrics import RejectedFramesCollector
from meshd.dataplane.metrics import register_all as register_dataplane_metrics
from meshd.metrics import MeshdMetrics, TenantUsageCollector
from meshd.node import MeshNode
from meshd.registry_view import NodeRegistryView
from meshd.service import MeshServicer, tenant_used
from meshd.view import MemberChange

log = logging.getLogger("meshd")

SERVICE_NAME = mesh_pb2.DESCRIPTOR.services_by_name["MeshService"].full_name


class _ViewQuotas:
    """The tenants' quotas as the node's cluster view holds them (a QuotaSource for the rate limiter)."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node

    @property
    def quotas(self) -> dict[str, mesh_pb2.TenantQuota]:
        return self.node.view.quotas


class Daemon:
    """One meshd: its node, its data plane and what it serves (create it inside the running loop)."""

    def __init__(self, config: MeshdConfig) -> None:
        self.config = config
        self.metrics = MeshdMetrics()
        register_dataplane_metrics(self.metrics.registry)
        self.node = MeshNode(config, self.metrics)
        self.dataplane = DataPlane(config.node_id, config.dataplane, NodeRegistryView(self.node))
        self.metrics.registry.register(RejectedFramesCollector(self.dataplane.counters))
        self.metrics.registry.register(TenantUsageCollector(self._tenant_usage))
        self.serving = Serving("meshd", registry=self.metrics.registry, security=config.security,
                               cluster=config.cluster)
        self.security = self.serving.security
        # Tenants' data-plane rate quotas, read from the node's watch-fed view (quotas/<tenant> in etcd).
        self.dataplane.router.limiter = RateLimiter(_ViewQuotas(self.node))
        self._connected_changed = asyncio.Event()
        self._serving = asyncio.Event()

    def _tenant_usage(self) -> list[tuple[str, str, float, float]]:
        """(tenant, quota, used, limit) of every tenant with a quota or a held unit (for /metrics)."""
        view = self.node.view
        limiter = self.dataplane.router.limiter
        now = time.monotonic()
        rows = []
        for tenant in sorted(set(view.quotas) | {tenant for tenant, _ in view.holders} | set(view.model_spend)):
            quota = view.quotas.get(tenant) or mesh_pb2.TenantQuota(tenant=tenant)
            used = tenant_used(view, limiter, tenant, now)
            rows += [(tenant, name, used[name], float(getattr(quota, name))) for name in used]
        return rows

    async def start_servers(self) -> None:
        """Bind the data plane, gRPC and metrics and publish their addresses in the node info."""
        # The data plane binds first: its addresses go into the NodeInfo this node publishes.
        try:
            await self.dataplane.start()
        except Exception as error:  # zmq.ZMQError (port in use) and friends
            raise StartupError(f"cannot start the data plane: {error}") from None
        config, info = self.config, self.node.info
        info.data_addresses.update(self.dataplane.addresses)
        info.curve_public_key = self.dataplane.curve_public_key or ""
        self.node.on_member_change = self._on_member_change
        self.node.on_name_lost = self._on_name_lost
        self.serving.add(mesh_pb2_grpc.add_MeshServiceServicer_to_server, MeshServicer(self.node, self.dataplane),
                         SERVICE_NAME)
        await self.serving.set_serving("etcd", False)
        port = await self.serving.start_grpc(config.grpc_host, config.grpc_port)
        info.grpc_address = f"{config.advertised}:{port}"
        metrics_port = self.serving.start_metrics(config.grpc_host, config.metrics_port)
        if metrics_port is not None:
            info.metrics_address = f"{config.advertised}:{metrics_port}"

    def _on_member_change(self, change: MemberChange) -> None:
        # etcd membership is the authority for join and leave; the data plane follows it.
        node = change.node
        if node.node_id == self.config.node_id:
            return
        if change.type == mesh_pb2.MemberEvent.LEFT:
            self.dataplane.peer_down(node.node_id)
            return
        try:
            self.dataplane.peer_up(node.node_id, dict(node.data_addresses), node.curve_public_key or None)
        except DataPlaneError as error:
            log.warning("cannot connect the data plane to %s: %s", node.node_id, error)

    def _on_name_lost(self, ours: mesh_pb2.NameEntry, holder: mesh_pb2.NameEntry) -> None:
        # Tell the attached endpoint that owned the name (if the name was an attached endpoint's).
        if self.dataplane.attach is not None:
            self.dataplane.attach.name_lost(ours.tenant, ours.name, ours.target.agent_id,
                                            f"name {ours.name!r} is now held by agent {holder.target.agent_id!r} "
                                            f"on node {holder.target.node_id!r}")

    async def _health_loop(self) -> None:
        await self.node.ready.wait()
        for name in ("", SERVICE_NAME):
            await self.serving.set_serving(name, True)
        self._serving.set()
        while True:
            await self.serving.set_serving("etcd", self.node.etcd_connected)
            self._connected_changed.clear()
            await self._connected_changed.wait()

    async def _announce(self) -> None:
        # Joined etcd, channels bound, gRPC health SERVING: only now is this meshd ready.
        await self._serving.wait()
        info = self.node.info
        # The addresses actually bound (port 0 → the OS's choice): `mabeam up` and the harness read them.
        self.serving.ready(self.status(), node_id=info.node_id, grpc=info.grpc_address,
                           metrics=info.metrics_address or None, attach=self.dataplane.attach_address,
                           data=dict(self.dataplane.addresses))

    def status(self) -> str:
        """One line for ``systemctl status``: members, the mesh leader, names, attached endpoints, etcd."""
        view = self.node.view
        leader = view.leader("mesh").node_id or "none"
        return (f"{len(view.members)} members, mesh leader {leader}, {len(view.names)} names, "
                f"{len(self.dataplane.endpoints)} local endpoints, "
                f"etcd {'connected' if self.node.etcd_connected else 'UNREACHABLE'}")

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or :meth:`stop`."""
        self.serving.on_stop(self.node.stop, "leaving the cluster")
        self.node.on_connected_change = lambda _connected: self._connected_changed.set()
        try:
            await self.start_servers()
            async with asyncio.TaskGroup() as tg:
                health_task = tg.create_task(self._health_loop())
                announce = tg.create_task(self._announce())
                systemd = tg.create_task(self.serving.watchdog(self.status))
                keys = tg.create_task(self.serving.follow_keys(self.node.client))
                await self.node.run()
                health_task.cancel()
                announce.cancel()
                systemd.cancel()
                keys.cancel()
        finally:
            await self.serving.close(self.config.shutdown_grace)
            await self.dataplane.stop()

    def stop(self) -> None:
        """Leave the cluster and shut down."""
        self.serving.notifier.stopping("leaving the cluster")
        self.node.stop()


async def run(config: MeshdConfig) -> None:
    """Run one meshd until it stops (what ``python -m meshd`` runs, see meshd/__main__.py)."""
    await Daemon(config).run()


def check_binds(config: MeshdConfig) -> None:
    """Before the loop: InsecureBindError (exit 2) unless gRPC and the data plane are on loopback or secured."""
    check_bind(config.grpc_host, config.grpc_port, config.security)
    plane = config.dataplane
    if not plane.curve and not is_loopback(plane.bind_host):
        raise InsecureBindError(f"refusing to bind the data plane on {plane.bind_host} without CURVE: other hosts "
                                "could send as any tenant; set [dataplane] curve = true (docs/security.md), or bind "
                                "127.0.0.1 for a dev cluster")
