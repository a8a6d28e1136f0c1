"""The agentd daemon: the worker pool, the gRPC AgentService (with health and reflection), /metrics.

Create gRPC objects inside the running loop (``uvloop.run``); workers are spawned
as fresh interpreters, so starting them after gRPC is safe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from agentd import metrics
from agentd.config import AgentdConfig
from agentd.mesh import MeshLink
from agentd.models import metrics as model_metrics
from agentd.models.ledger import EtcdLedger, Ledger, MemoryLedger
from agentd.models.router import ModelRouter
from agentd.models.service import ModelService
from agentd.runs.http import RunsHttp
from agentd.runs.manager import RunManager
from agentd.runs.service import RunServicer
from agentd.service import AgentService
from agentd.workers import WorkerPool
from mabeam.etcd.client import EtcdClient
from mabeam.grpcutil import ErrorInterceptor
from mabeam.startup import StartupError, announce_ready
from mabeam.systemd import Notifier
from mabeam.v1 import agent_pb2, agent_pb2_grpc, model_pb2, model_pb2_grpc, run_pb2, run_pb2_grpc

log = logging.getLogger("agentd")
SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
MODEL_SERVICE_NAME = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
RUN_SERVICE_NAME = run_pb2.DESCRIPTOR.services_by_name["RunService"].full_name


def default_store_url(data_dir: str) -> str:
    """The runs store when none is configured: a SQLite file in the data dir."""
    return f"sqlite://{os.path.join(os.path.abspath(data_dir), 'runs.sqlite')}"


class Daemon:
    """One agentd: start it, serve until stopped, stop it."""

    def __init__(self, config: AgentdConfig) -> None:
        self.config = config
        self.pool: WorkerPool | None = None
        self.mesh: MeshLink | None = None
        self.server: grpc.aio.Server | None = None
        self.models: ModelRouter | None = None
        self.etcd: EtcdClient | None = None
        self.runs: RunManager | None = None
        self.http: RunsHttp | None = None
        self.http_port = 0
        self.grpc_port = 0
        self.metrics_port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._stopped = asyncio.Event()
        self.notifier = Notifier.from_env()

    async def start(self) -> None:
        """Start workers, then the gRPC server; ``grpc_port`` is the bound port."""
        config = self.config
        self.models = self._model_router()  # first: a bad [models] section fails before workers start
        data_dir = config.data_dir
        if not data_dir:
            self._tmp = tempfile.TemporaryDirectory(prefix="agentd-")
            data_dir = self._tmp.name
        os.makedirs(data_dir, exist_ok=True)
        worker_config = {"node_id": config.node_id, "store_path": str(Path(data_dir) / "checkpoints.sqlite"),
                         "codec": config.codec, "mailbox_capacity": config.mailbox_capacity,
                         "block_warn_s": config.block_warn_s, "agent_types": config.agent_types,
                         "examples": config.examples, "log_level": config.log_level, "tools": config.tools,
                         "tool_policy": config.tool_policy, "llm_agents": config.llm_agents}
        self.pool = WorkerPool(worker_config, workers=config.workers or None, block_kill_s=config.block_kill_s)
        interceptor = ErrorInterceptor()
        metrics.track(self.pool, interceptor)
        await self.pool.start()
        if config.meshd_attach:
            self.mesh = MeshLink(self.pool, config.meshd_attach)
            try:
                await self.mesh.start()
            except Exception as error:  # noqa: BLE001 - reported as a startup failure naming the address
                self.mesh = None
                raise StartupError(f"cannot attach to meshd at {config.meshd_attach}: {error}") from None
            self.pool.mesh = self.mesh
        if config.etcd:
            await self._start_runs(worker_config, data_dir)
        server = grpc.aio.server(interceptors=[interceptor], options=[("grpc.so_reuseport", 0)])
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(self.pool), server)
        assert self.models is not None
        model_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.models), server)
        run_pb2_grpc.add_RunServiceServicer_to_server(RunServicer(self.runs), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((SERVICE_NAME, MODEL_SERVICE_NAME, RUN_SERVICE_NAME, health.SERVICE_NAME,
                                             reflection.SERVICE_NAME), server)
        try:
            self.grpc_port = server.add_insecure_port(config.grpc_address)
        except RuntimeError:  # newer grpcio raises where older ones returned 0
            self.grpc_port = 0
        if self.grpc_port == 0:
            raise StartupError(f"cannot bind gRPC on {config.grpc_address}: the port is in use or the address "
                               "is not local")
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set(RUN_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING if self.runs is not None
                                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server = server
        if config.http_address:
            if self.runs is None:
                log.warning("http_address is set but durable runs are off (no etcd): the HTTP face is not served")
            else:
                self.http = RunsHttp(self.runs, config.runs.max_body_bytes)
                self.http_port = await self.http.start_server(config.http_address)
        if config.metrics_address:
            host, port = config.metrics_address.rsplit(":", 1)
            try:
                metrics_server, _ = start_http_server(int(port), addr=host)
            except OSError as error:
                raise StartupError(f"cannot bind metrics on {config.metrics_address}: {error.strerror}") from None
            self.metrics_port = metrics_server.server_port
        log.info("agentd serving AgentService on %s:%d with %d workers",
                 config.grpc_address.rsplit(":", 1)[0], self.grpc_port, self.pool.shared_count)

    def _model_router(self) -> ModelRouter:
        """The model providers of ``[models]`` (API keys read now: a missing one stops startup, naming it)."""
        settings = self.config.models
        ledger: Ledger = MemoryLedger()
        if settings.budgets.store == "etcd":
            ledger = EtcdLedger(settings.budgets.etcd_endpoints, settings.budgets.cluster)
        try:
            router = ModelRouter(settings, ledger)
        except ValueError as error:
            raise RuntimeError(f"models: {error}") from None
        model_metrics.track(router)
        return router

    async def _start_runs(self, worker_config: dict[str, object], data_dir: str) -> None:
        """Connect to etcd and open the runs store; durable runs are served from here on."""
        from agentd.worker import build_registry

        config = self.config
        assert self.pool is not None
        self.etcd = EtcdClient(config.etcd)
        try:
            await self.etcd.wait_connected(30.0)
        except Exception as error:
            raise StartupError(f"cannot reach etcd at {','.join(config.etcd)}: {error}") from None
        registry = build_registry(worker_config)
        store_url = config.runs.store or default_store_url(data_dir)
        node_id = config.node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.runs = RunManager(config.runs, self.pool, node_id, self.etcd, config.cluster, store_url,
                               {name: registry.get(name) for name in registry.names()})
        self.runs.models = self.models  # a run's model op calls the daemon's router (budgets, breakers)
        await self.runs.start()

    async def stop(self) -> None:
        """Stop serving, hand executing runs back, then shut every worker (and agent) down."""
        if self.http is not None:
            await self.http.stop()
        if self.server is not None:
            await self.server.stop(grace=2.0)
        if self.runs is not None:
            await self.runs.stop()
        if self.etcd is not None:
            await self.etcd.close()
        if self.models is not None:
            await self.models.close()
        if self.mesh is not None:
            await self.mesh.close()  # detach first: meshd drops this agentd's names at once
        if self.pool is not None:
            await self.pool.close()
        if self._tmp is not None:
            self._tmp.cleanup()
        self._stopped.set()

    def status(self) -> str:
        """One line for ``systemctl status``: agents, workers, names and the mesh attachment."""
        pool = self.pool
        if pool is None:
            return "starting"
        handles = list(pool.workers.values())
        agents = sum(sum(h.stats.get("agents", {}).values()) for h in handles)
        alive = sum(1 for h in handles if h.alive)
        mesh = f"attached to meshd at {self.config.meshd_attach}" if self.mesh is not None else "off the mesh"
        return f"{agents} agents on {alive}/{len(handles)} workers, {len(pool.names)} names, {mesh}"

    def announce(self) -> None:
        """Print the ready line with the addresses actually bound (see :mod:`mabeam.startup`)."""
        config = self.config
        host = config.grpc_address.rsplit(":", 1)[0]
        metrics_host = config.metrics_address.rsplit(":", 1)[0] if config.metrics_address else ""
        http_host = config.http_address.rsplit(":", 1)[0] if config.http_address else ""
        announce_ready("agentd", node_id=config.node_id, grpc=f"{host}:{self.grpc_port}",
                       metrics=f"{metrics_host}:{self.metrics_port}" if self.metrics_port else None,
                       http=f"{http_host}:{self.http_port}" if self.http_port else None)

    async def run(self) -> None:
        """Start, print the ready line, serve until SIGTERM/SIGINT, stop."""
        try:
            await self.start()
        except BaseException:
            await self.stop()  # workers already started must not outlive a failed start
            raise
        self.announce()
        self.notifier.ready(self.status())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with asyncio.TaskGroup() as tg:
            systemd = tg.create_task(self.notifier.run(self.status))
            await stop.wait()
            self.notifier.stopping("stopping agents and workers")
            systemd.cancel()
        await self.stop()
