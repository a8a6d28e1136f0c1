"""The agentd main process's view of its workers: one :class:`WorkerHandle` per worker process,
the counters the metrics read (:class:`WorkerEvents`), the :class:`MeshBridge` a mesh plugs in, and each
tenant's names, child ids and groups (:class:`TenantSpace`).

:class:`~agentd.workers.WorkerPool` owns the handles; this module holds no logic beyond them.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentd import frames
from agentd.groups import GroupTable
from agentd.ipc import Channel
from agentd.supervision import ChildSpec

DEFAULT_TENANT = "default"


@dataclass
class WorkerEvents:
    """Counters the metrics read: watchdog events and worker restarts."""

    blocked: int = 0
    killed: int = 0
    worker_restarts: int = 0
    last_blocked_agent: str = ""
    blocked_agents: list[tuple[str, str, float]] = field(default_factory=list)  # (worker, agent, seconds)


class MeshBridge(Protocol):
    """Where the mesh plugs in (issue 4, item 7): names out to the registry, unknown destinations out
    to the data plane. Inbound messages from the data plane come in through ``WorkerPool.cast``
    and ``WorkerPool.call``."""

    def name_registered(self, name: str, agent_id: str, tenant: str) -> None:
        """An agent of ``tenant`` here took a name: register it in meshd (under this node's lease)."""
        ...

    def name_unregistered(self, name: str, agent_id: str, tenant: str) -> None:
        """An agent here exited or was stopped: remove its name from meshd."""
        ...

    def cast(self, to: str, msg: Any, sender: str | None, tenant: str) -> None:
        """Send to an agent of ``tenant`` on another node (NoSuchAgent if the name is unknown cluster-wide)."""
        ...

    async def call(self, to: str, msg: Any, timeout: float, tenant: str) -> Any:
        """frames.Call an agent of ``tenant`` on another node; its reply or a typed AgentError."""
        ...

    def group_joined(self, group: str, tenant: str) -> None:
        """The first agent of ``tenant`` here joined ``group``: join this agentd to meshd's group."""
        ...

    def group_left(self, group: str, tenant: str) -> None:
        """The last agent here left ``group`` (or exited, or its worker died): leave meshd's group."""
        ...

    def send_group(self, group: str, msg: Any, mode: str, sender: str | None, tenant: str) -> None:
        """A group cast through meshd. "all": every agentd in the group gets a copy, and the
        sending one must ignore its own (it delivered to its members already); "one": meshd
        picks the agentd, which delivers to one of its members."""
        ...


class WorkerHandle:
    """One worker process as the main process sees it."""

    def __init__(self, worker_id: str, dedicated: bool, tenant: str = DEFAULT_TENANT) -> None:
        self.worker_id = worker_id
        self.dedicated = dedicated
        #: The tenant whose agents (and only theirs) this worker hosts.
        self.tenant = tenant
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        #: In-flight requests: rid -> (reply future, deadline on time.monotonic(), timeout).
        self.pending: dict[int, tuple[asyncio.Future[Any], float, float]] = {}
        self.ready = asyncio.Event()
        self.alive = False
        self.pid = 0
        self.last_heartbeat = time.monotonic()
        self.stats: dict[str, Any] = {}
        #: Spawns sent to this worker, in order: (child id, spec, supervisor) -- re-sent after a restart.
        self.spawns: dict[str, tuple[ChildSpec, str | None]] = {}
        self.restarts: tuple[float, ...] = ()
        self.generation = 0
        self.watchdog_sock: socket.socket | None = None
        self.retired = False  # a dedicated worker whose agent is gone: not restarted

    def write(self, frame: frames.Frame) -> None:
        """Send a frame to the worker (dropped when its channel is closed: the death path answers)."""
        channel = self.channel
        if channel is not None:
            channel.write(frame)


@dataclass
class TenantSpace:
    """One tenant's names, top-level child ids and process groups on this agentd."""

    names: dict[str, str] = field(default_factory=dict)  # name -> agent id
    owner: dict[str, str] = field(default_factory=dict)  # top-level child id -> worker id
    #: Process groups of the tenant's agents: members are (worker id, agent id).
    groups: GroupTable[tuple[str, str]] = field(default_factory=GroupTable)
