"""The agentd daemon: the worker pool, the gRPC AgentService, ModelService and RunService, /metrics.

Create gRPC objects inside the running loop (``uvloop.run``); workers are spawned
as fresh interpreters, so starting them after gRPC is safe. What every daemon
does around this (the command line, config, logging, the gRPC server with health
and reflection, /metrics, signals, the ready line, systemd) is :mod:`mabeam.daemon`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
from pathlib import Path

from agentd.config import AgentdConfig
from agentd.mesh import MeshLink
from agentd.metrics import AgentdCollector
from agentd.models.ledger import EtcdLedger, Ledger, MemoryLedger
from agentd.models.metrics import ModelCollector
from agentd.models.router import ModelRouter
from agentd.models.service import ModelService
from agentd.quotas import AgentQuota, RunQuota
from agentd.runs.http import RunsHttp
from agentd.runs.manager import RunManager
from agentd.runs.service import RunServicer
from agentd.service import AgentService
from agentd.workers import WorkerPool
from mabeam.config import ConfigError
from mabeam.daemon import Serving
from mabeam.etcd.client import EtcdClient
from mabeam.security.server import check_bind
from mabeam.startup import StartupError
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
        self.serving = Serving("agentd", security=config.security, cluster=config.cluster)
        self.security = self.serving.security
        self.serving.registry.register(AgentdCollector(lambda: [self.pool] if self.pool is not None else []))
        self.serving.registry.register(ModelCollector(lambda: [self.models] if self.models is not None else []))
        self.models: ModelRouter | None = None
        self.etcd: EtcdClient | None = None
        self.quota: AgentQuota | None = None
        self.runs: RunManager | None = None
        self.http: RunsHttp | None = None
        self.http_port = 0
        self.grpc_port = 0
        self.metrics_port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._keys_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Start workers, then the gRPC server; ``grpc_port`` is the bound port."""
        config = self.config
        self.models = self._model_router()  # first: a bad [models] section fails before workers start
        grpc_host, grpc_port = config.grpc_address.rsplit(":", 1)
        check_bind(grpc_host, int(grpc_port), config.security)  # an unsecured non-loopback address: before workers
        if config.http_address:
            http_host, http_port = config.http_address.rsplit(":", 1)
            check_bind(http_host, int(http_port), config.security)
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
        serving = self.serving
        assert self.models is not None
        serving.add(agent_pb2_grpc.add_AgentServiceServicer_to_server, AgentService(self.pool, self.quota),
                    SERVICE_NAME)
        serving.add(model_pb2_grpc.add_ModelServiceServicer_to_server, ModelService(self.models), MODEL_SERVICE_NAME)
        serving.add(run_pb2_grpc.add_RunServiceServicer_to_server, RunServicer(self.runs), RUN_SERVICE_NAME)
        host, port = config.grpc_address.rsplit(":", 1)
        self.grpc_port = await serving.start_grpc(host, int(port))
        await serving.set_serving("", True)
        await serving.set_serving(SERVICE_NAME, True)
        await serving.set_serving(MODEL_SERVICE_NAME, True)
        await serving.set_serving(RUN_SERVICE_NAME, self.runs is not None)
        self._keys_task = asyncio.create_task(serving.follow_keys(self.etcd))  # cancelled in stop()
        if config.http_address:
            if self.runs is None:
                log.warning("http_address is set but durable runs are off (no etcd): the HTTP face is not served")
            else:
                self.http = RunsHttp(self.runs, config.runs.max_body_bytes, self.security)
                self.http_port = await self.http.start_server(config.http_address)
        if config.metrics_address:
            host, port = config.metrics_address.rsplit(":", 1)
            self.metrics_port = serving.start_metrics(host, int(port)) or 0
        log.info("agentd serving AgentService on %s:%d with %d workers",
                 config.grpc_address.rsplit(":", 1)[0], self.grpc_port, self.pool.shared_count)

    def _model_router(self) -> ModelRouter:
        """The model providers of ``[models]`` (API keys read now: a missing one stops startup, naming it)."""
        settings = self.config.models
        ledger: Ledger = MemoryLedger()
        if settings.budgets.store == "etcd":
            ledger = EtcdLedger(settings.budgets.etcd_endpoints, settings.budgets.cluster)
        try:
            return ModelRouter(settings, ledger)
        except ValueError as error:
            raise ConfigError(f"invalid agentd config:\n  models: {error}") from None

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
        self.quota = AgentQuota(self.etcd, config.cluster, node_id)
        await self.quota.start()
        self.pool.on_removed = self.quota.removed
        if self.models is not None:  # the tenants' model_max_* quotas tighten their model budgets
            self.models.tenant_quota = self.quota.model_limits
        self.runs.quota = RunQuota(self.etcd, config.cluster, self.runs.run_status)

    async def stop(self) -> None:
        """Stop serving, hand executing runs back, then shut every worker (and agent) down."""
        if self.http is not None:
            await self.http.stop()
        await self.serving.close(grace=2.0)
        if self._keys_task is not None:
            self._keys_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keys_task
        if self.runs is not None:
            await self.runs.stop()
        if self.quota is not None:
            await self.quota.close()
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
        """Print the ready line with the addresses actually bound (see :mod:`mabeam.startup`); tell systemd."""
        config = self.config
        host = config.grpc_address.rsplit(":", 1)[0]
        metrics_host = config.metrics_address.rsplit(":", 1)[0] if config.metrics_address else ""
        http_host = config.http_address.rsplit(":", 1)[0] if config.http_address else ""
        self.serving.ready(self.status(), node_id=config.node_id, grpc=f"{host}:{self.grpc_port}",
                           metrics=f"{metrics_host}:{self.metrics_port}" if self.metrics_port else None,
                           http=f"{http_host}:{self.http_port}" if self.http_port else None)

    async def run(self) -> None:
        """Start, print the ready line, serve until SIGTERM/SIGINT, stop."""
        try:
            await self.start()
        except BaseException:
            await self.stop()  # workers already started must not outlive a failed start
            raise
        stop = asyncio.Event()
        self.serving.on_stop(stop.set, "stopping agents and workers")
        self.announce()
        async with asyncio.TaskGroup() as tg:
            systemd = tg.create_task(self.serving.watchdog(self.status))
            await stop.wait()
            systemd.cancel()
        await self.stop()


async def run(config: AgentdConfig) -> None:
    """Run one agentd until it stops (what ``python -m agentd`` runs, see agentd/__main__.py)."""
    await Daemon(config).run()
