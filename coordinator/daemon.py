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
import signal
import sys
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics
from coordinator.node import CoordinatorNode
from coordinator.service import CoordinatorServicer
from mabeam.etcd.client import EtcdUnavailable
from mabeam.grpcutil import ErrorInterceptor
from mabeam.startup import StartupError, announce_ready, startup_exit
from mabeam.systemd import EXIT_TEMPFAIL, Notifier
from mabeam.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger("coordinator")

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class Daemon:
    """One coordinator process."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.metrics = CoordinatorMetrics()
        self.node = CoordinatorNode(config, metrics=self.metrics)
        self.metrics.watch_state(lambda: self.node.leading)
        self.metrics_address = ""
        self._metrics_server: WSGIServer | None = None
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(interceptors=[ErrorInterceptor(self.metrics.registry)], options=[
            ("grpc.so_reuseport", 0),  # a second coordinator on the same port must fail, not share it
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Clients ping every 2 s to notice a silent leader (mabeam_client.coordinator.KEEPALIVE_OPTIONS);
            # without these the server answers such pings with GOAWAY (too_many_pings).
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
            ("grpc.http2.max_ping_strikes", 0),
        ])
        self.notifier = Notifier.from_env()

    async def start_server(self) -> str:
        """Bind the gRPC port; returns the advertised address."""
        coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(CoordinatorServicer(self.node), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        address = f"{self.config.grpc_host}:{self.config.grpc_port}"
        try:
            port = self.server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if not port:
            raise StartupError(f"cannot bind gRPC on {address}: the port is in use or the address is not local")
        if self.config.metrics_port is not None:
            try:
                self._metrics_server, _ = start_http_server(self.config.metrics_port, addr=self.config.grpc_host,
                                                            registry=self.metrics.registry)
            except OSError as error:
                raise StartupError(f"cannot bind metrics on {self.config.grpc_host}:{self.config.metrics_port}: "
                                   f"{error.strerror}") from None
            self.metrics_address = f"{self.config.advertised}:{self._metrics_server.server_port}"
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        return f"{self.config.advertised}:{port}"

    async def _announce(self) -> None:
        await self.node.ready.wait()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        leading = None
        while True:  # keep the service's health equal to "this node leads"
            now = self.node.leading is not None
            if now != leading:
                leading = now
                await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING if now
                                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            if not self.notifier.is_ready and self.node.standing:
                # Serving and either elected or standing by with a candidacy in etcd.
                announce_ready("coordinator", node_id=self.config.node_id, grpc=self.node.address,
                               metrics=self.metrics_address or None)
                self.notifier.ready(self.status())
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
        """Resign and stop serving (SIGTERM/SIGINT)."""
        self.notifier.stopping("resigning")
        self.node.stop()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.node.address = await self.start_server()
        try:
            async with asyncio.TaskGroup() as tg:
                announce = tg.create_task(self._announce())
                systemd = tg.create_task(self.notifier.run(self.status))
                try:
                    await self.node.run()
                except EtcdUnavailable as error:
                    raise StartupError(f"etcd {','.join(self.config.etcd)} unreachable: {error}") from None
                finally:
                    announce.cancel()
                    systemd.cancel()
        finally:
            await self.server.stop(self.config.shutdown_grace)
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()


def run(config: CoordinatorConfig) -> int:
    """Run the coordinator to completion; returns the exit code."""
    import uvloop

    from coordinator.plugins import PluginError, load_mechanisms

    try:
        kinds = load_mechanisms(config.mechanism_modules)
    except PluginError as error:
        print(f"coordinator: {error}", file=sys.stderr)
        return 2
    if kinds:
        log.info("mechanism plugins loaded: %s", ", ".join(kinds))

    async def main() -> None:
        await Daemon(config).run()  # gRPC objects must be created inside the running loop

    try:
        uvloop.run(main())
    except (StartupError, BaseExceptionGroup) as error:
        # etcd unreachable or the port held: a retry may pass.
        return startup_exit("coordinator", error, EXIT_TEMPFAIL)
    return 0
