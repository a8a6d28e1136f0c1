"""The meshd process: config → gRPC server (MeshService, health, reflection) → metrics → join the cluster.

Health: service ``""`` and ``mabeam.v1.MeshService`` are SERVING once the node
has joined; service ``etcd`` is NOT_SERVING while etcd is unreachable (cached
lookups keep working meanwhile). SIGTERM/SIGINT leave the cluster at once by
revoking the node's lease.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from mabeam.dataplane.errors import DataPlaneError
from mabeam.grpcutil import ErrorInterceptor
from mabeam.startup import StartupError, announce_ready, startup_exit
from mabeam.systemd import EXIT_TEMPFAIL, Notifier
from mabeam.v1 import mesh_pb2, mesh_pb2_grpc
from meshd.config import MeshdConfig
from meshd.dataplane import DataPlane
from meshd.metrics import MeshdMetrics
from meshd.node import MeshNode
from meshd.registry_view import NodeRegistryView
from meshd.service import MeshServicer
from meshd.view import MemberChange

log = logging.getLogger("meshd")

SERVICE_NAME = mesh_pb2.DESCRIPTOR.services_by_name["MeshService"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class Daemon:
    """One meshd: its node, its gRPC server and its metrics endpoint."""

    def __init__(self, config: MeshdConfig) -> None:
        self.config = config
        self.metrics = MeshdMetrics()
        self.node = MeshNode(config, self.metrics)
        self.dataplane = DataPlane(config.node_id, config.dataplane, NodeRegistryView(self.node))
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(interceptors=[ErrorInterceptor(self.metrics.registry)], options=[
            ("grpc.so_reuseport", 0),  # a second meshd on the same port must fail, not share it
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ])
        self._metrics_server = None
        self._connected_changed = asyncio.Event()
        self._serving = asyncio.Event()
        self.notifier = Notifier.from_env()

    async def start_servers(self) -> None:
        """Bind the gRPC and metrics ports and publish their addresses in the node info."""
        # The data plane binds first: its addresses go into the NodeInfo this node publishes.
        try:
            await self.dataplane.start()
        except Exception as error:  # zmq.ZMQError (port in use) and friends
            raise StartupError(f"cannot start the data plane: {error}") from None
        self.node.info.data_addresses.update(self.dataplane.addresses)
        self.node.info.curve_public_key = self.dataplane.curve_public_key or ""
        self.node.on_member_change = self._on_member_change
        self.node.on_name_lost = self._on_name_lost
        mesh_pb2_grpc.add_MeshServiceServicer_to_server(MeshServicer(self.node, self.dataplane), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        address = f"{self.config.grpc_host}:{self.config.grpc_port}"
        try:
            port = self.server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if not port:
            raise StartupError(f"cannot bind gRPC on {address}: the port is in use or the address is not local")
        self.node.info.grpc_address = f"{self.config.advertised}:{port}"
        if self.config.metrics_port is not None:
            try:
                self._metrics_server, _ = start_http_server(self.config.metrics_port, addr=self.config.grpc_host,
                                                            registry=self.metrics.registry)
            except OSError as error:
                raise StartupError(f"cannot bind metrics on {self.config.grpc_host}:{self.config.metrics_port}: "
                                   f"{error.strerror}") from None
            self.node.info.metrics_address = f"{self.config.advertised}:{self._metrics_server.server_port}"
        for name in ("", SERVICE_NAME, "etcd"):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

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
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving.set()
        while True:
            status = (health_pb2.HealthCheckResponse.SERVING if self.node.etcd_connected
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            await self.health.set("etcd", status)
            self._connected_changed.clear()
            await self._connected_changed.wait()

    async def _announce(self) -> None:
        # Joined etcd, channels bound, gRPC health SERVING: only now is this meshd ready.
        await self._serving.wait()
        info = self.node.info
        # The addresses actually bound (port 0 → the OS's choice): `mabeam up` and the harness read them.
        announce_ready("meshd", node_id=info.node_id, grpc=info.grpc_address, metrics=info.metrics_address or None,
                       attach=self.dataplane.attach_address, data=dict(self.dataplane.addresses))
        self.notifier.ready(self.status())

    def status(self) -> str:
        """One line for ``systemctl status``: members, the mesh leader, names, attached endpoints, etcd."""
        view = self.node.view
        leader = view.leader("mesh").node_id or "none"
        return (f"{len(view.members)} members, mesh leader {leader}, {len(view.names)} names, "
                f"{len(self.dataplane.endpoints)} local endpoints, "
                f"etcd {'connected' if self.node.etcd_connected else 'UNREACHABLE'}")

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or :meth:`stop`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.node.on_connected_change = lambda _connected: self._connected_changed.set()
        await self.start_servers()
        try:
            async with asyncio.TaskGroup() as tg:
                health_task = tg.create_task(self._health_loop())
                announce = tg.create_task(self._announce())
                systemd = tg.create_task(self.notifier.run(self.status))
                await self.node.run()
                health_task.cancel()
                announce.cancel()
                systemd.cancel()
        finally:
            await self.server.stop(self.config.shutdown_grace)
            await self.dataplane.stop()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()

    def stop(self) -> None:
        """Leave the cluster and shut down."""
        self.notifier.stopping("leaving the cluster")
        self.node.stop()


def run(config: MeshdConfig) -> int:
    """Run meshd to completion; returns the process exit code."""
    import uvloop

    async def main() -> None:
        await Daemon(config).run()

    try:
        uvloop.run(main())
    except (StartupError, BaseExceptionGroup) as error:
        # etcd unreachable, a port held, the node id still live: a retry may pass.
        return startup_exit("meshd", error, EXIT_TEMPFAIL)
    return 0
