"""The coordinator process: gRPC server (CoordinatorService, health, reflection) + the active/standby node.

Prints one ready line (:mod:`mabeam.startup`: ``coordinator ready {"node_id": ...,
"grpc": "HOST:PORT", ...}``) on stdout once it serves (as a standby or the
leader); ``mabeam up`` and tests wait for it and read the bound port from it.
Health service ``mabeam.v1.CoordinatorService`` is SERVING on the leader and
NOT_SERVING on a standby; ``""`` is SERVING whenever the process serves.
SIGTERM/SIGINT resign (the standby takes over at once) and exit.
"""

from __future__ import annotations

import asyncio
import logging

from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics
from coordinator.node import CoordinatorNode
from coordinator.plugins import PluginError, load_mechanisms
from coordinator.service import CoordinatorServicer
from mabeam.config import ConfigError
from mabeam.daemon import Serving
from mabeam.etcd.client import EtcdUnavailable
from mabeam.startup import StartupError
from mabeam.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger("coordinator")

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
#: Clients ping every 2 s to notice a silent leader (mabeam_client.coordinator.KEEPALIVE_OPTIONS);
#: without these the server answers such pings with GOAWAY (too_many_pings).
KEEPALIVE_OPTIONS = (("grpc.http2.min_recv_ping_interval_without_data_ms", 1000), ("grpc.http2.max_ping_strikes", 0))


class Daemon:
    """One coordinator process (create it inside the running loop)."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.metrics = CoordinatorMetrics()
        self.node = CoordinatorNode(config, metrics=self.metrics)
        self.metrics.watch_state(lambda: self.node.leading)
        self.metrics_address = ""
        self.serving = Serving("coordinator", registry=self.metrics.registry, options=KEEPALIVE_OPTIONS,
                               security=config.security, cluster=config.cluster)
        self.security = self.serving.security

    async def start_server(self) -> str:
        """Bind gRPC and /metrics; returns the advertised gRPC address."""
        config = self.config
        self.serving.add(coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server,
                         CoordinatorServicer(self.node), SERVICE_NAME)
        port = await self.serving.start_grpc(config.grpc_host, config.grpc_port)
        metrics_port = self.serving.start_metrics(config.grpc_host, config.metrics_port)
        if metrics_port is not None:
            self.metrics_address = f"{config.advertised}:{metrics_port}"
        return f"{config.advertised}:{port}"

    async def _announce(self) -> None:
        await self.node.ready.wait()
        await self.serving.set_serving("", True)
        leading = None
        ready = False
        while True:  # keep the service's health equal to "this node leads"
            now = self.node.leading is not None
            if now != leading:
                leading = now
                await self.serving.set_serving(SERVICE_NAME, now)
            if not ready and self.node.standing:
                # Serving and either elected or standing by with a candidacy in etcd.
                ready = True
                self.serving.ready(self.status(), node_id=self.config.node_id, grpc=self.node.address,
                                   metrics=self.metrics_address or None)
            await asyncio.sleep(0.1)

    def status(self) -> str:
        """One line for ``systemctl status``: leader or standby, term, open instances."""
        engine = self.node.leading
        if engine is not None:
            open_instances = sum(1 for i in engine.instances.values() if i.state == "open")
            return f"leader, term {self.node.term}, {open_instances} open instances of {len(engine.instances)}"
        if self.node.standing:
            return "standby, campaigning for the coordinator role"
        return "not a candidate yet (waiting for etcd)"

    def stop(self) -> None:
        """Resign and stop serving."""
        self.serving.notifier.stopping("resigning")
        self.node.stop()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT."""
        self.serving.on_stop(self.node.stop, "resigning")
        try:
            self.node.address = await self.start_server()
            async with asyncio.TaskGroup() as tg:
                announce = tg.create_task(self._announce())
                systemd = tg.create_task(self.serving.watchdog(self.status))
                keys = tg.create_task(self.serving.follow_keys(self.node.client))
                try:
                    await self.node.run()
                except EtcdUnavailable as error:
                    raise StartupError(f"etcd {','.join(self.config.etcd)} unreachable: {error}") from None
                finally:
                    announce.cancel()
                    systemd.cancel()
                    keys.cancel()
        finally:
            await self.serving.close(self.config.shutdown_grace)


def load_plugins(config: CoordinatorConfig) -> None:
    """Before the loop: import the mechanism plugins (a plugin that fails to load is a config problem)."""
    try:
        kinds = load_mechanisms(config.mechanism_modules)
    except PluginError as error:
        raise ConfigError(str(error)) from None
    if kinds:
        log.info("mechanism plugins loaded: %s", ", ".join(kinds))


async def run(config: CoordinatorConfig) -> None:
    """Run one coordinator until it stops (what ``python -m coordinator`` runs, see coordinator/__main__.py)."""
    await Daemon(config).run()
