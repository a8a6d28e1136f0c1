"""agentd's share of the tenant quotas: ``max_agents`` (below), ``max_concurrent_runs`` (:class:`RunQuota`).

Every agent started through ``AgentService.SpawnAgent`` holds one unit of its tenant's ``agents``
resource — the key ``usage/<tenant>/agents/<node>:<serial>`` in etcd, taken by
:class:`mabeam.security.quota.CountedQuota` (one conditioned transaction: of any number of racing
spawns on any number of nodes, no more than the limit succeed) — from before the agent starts until
it is removed for good (stopped, or a temporary agent that ended). A spawn over the limit fails with
RESOURCE_EXHAUSTED / ``QUOTA_EXCEEDED`` naming the limit, and nothing starts.

The keys live under this agentd's own etcd lease, so a dead agentd's agents stop counting when the
lease expires; when the lease is lost (etcd away for longer than its TTL) the units still held are
written again under a new one. Spawns on one agentd queue per tenant before the transaction (fewer
retries under contention; the transaction is what makes it exact). Agents that agents start
themselves (dynamic children inside a worker) are not counted. Without etcd there are no quotas.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from mabeam import keys
from mabeam.errors import ServiceError
from mabeam.etcd.client import EtcdClient, EtcdError, op_put
from mabeam.etcd.session import Session
from mabeam.security.quota import CountedQuota, QuotaBook, read_quota
from mabeam.v1 import mesh_pb2

log = logging.getLogger("agentd.quotas")

#: TTL of the lease the agent units live under (seconds): how long a dead agentd's agents keep counting.
LEASE_TTL = 10


class AgentQuota:
    """The ``max_agents`` units of the agents this agentd started (see the module docstring)."""

    def __init__(self, etcd: EtcdClient, cluster: str, node_id: str, ttl: int = LEASE_TTL) -> None:
        self.etcd = etcd
        self.cluster = cluster
        self.node_id = node_id
        self.ttl = ttl
        self.book = QuotaBook()
        self.counted = CountedQuota(etcd, cluster, "max_agents")
        #: holder -> tenant, for every unit this agentd holds now.
        self.held: dict[str, str] = {}
        #: (tenant, agent id) -> holder, for the agents started.
        self.agents: dict[tuple[str, str], str] = {}
        self._serials = itertools.count(1)
        self.session: Session | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the lease and follow the quotas (until :meth:`close`)."""
        self.session = await Session.open(self.etcd, self.ttl)
        self._runner = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.book.follow(self.etcd, self.cluster))
            group.create_task(self._keep_lease())

    async def _keep_lease(self) -> None:
        while True:
            assert self.session is not None
            await self.session.keepalive()  # returns when the lease is lost
            log.warning("the lease of this agentd's agent quota units was lost; writing them again")
            while True:
                try:
                    self.session = await Session.open(self.etcd, self.ttl)
                    for holder, tenant in list(self.held.items()):
                        await self.etcd.txn([], [op_put(self._key(tenant, holder), b"", self.session.lease_id)])
                    break
                except EtcdError as error:
                    log.debug("agent quota units: %s; retrying", error)
                    await asyncio.sleep(1.0)

    async def quota(self, tenant: str) -> mesh_pb2.TenantQuota:
        """The tenant's quota as etcd holds it now (etcd away: as the watch last told)."""
        try:
            return await read_quota(self.etcd, self.cluster, tenant)
        except EtcdError:
            return self.book.get(tenant)

    async def model_limits(self, tenant: str) -> tuple[int, int]:
        """The tenant's (model_max_tokens, model_max_cost_nusd), 0 unlimited: the model router's tenant quota."""
        quota = await self.quota(tenant)
        return int(quota.model_max_tokens), int(quota.model_max_cost_nusd)

    def _key(self, tenant: str, holder: str) -> bytes:
        return keys.usage_holder(self.cluster, tenant, "agents", holder)

    async def acquire(self, tenant: str, what: str) -> str:
        """Take a unit for an agent of ``tenant`` about to start; its holder, or QUOTA_EXCEEDED (a ServiceError)
        at the limit. Then :meth:`bind` it to the agent's id, or :meth:`release` it if the start failed."""
        assert self.session is not None, "start() first"
        holder = f"{self.node_id}:{next(self._serials)}"  # one etcd key segment, unique on this node
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            await self.counted.acquire(tenant, holder, self.session.lease_id, what=what)
        self.held[holder] = tenant
        return holder

    def bind(self, holder: str, tenant: str, agent_id: str) -> None:
        """The unit ``holder`` is held by the started agent ``agent_id`` (released when it is removed)."""
        self.agents[(tenant, agent_id)] = holder

    async def release(self, holder: str) -> None:
        """Give back a unit (nothing if it is not held)."""
        tenant = self.held.pop(holder, None)
        if tenant is None:
            return
        try:
            await self.counted.release(tenant, holder)
        except EtcdError as error:  # the lease takes it away when this agentd goes; until then it counts
            log.warning("could not give back quota unit %s of tenant %s: %s", holder, tenant, error)

    def removed(self, tenant: str, agent_id: str) -> None:
        """The pool's hook: an agent is gone for good (its unit is given back in the background)."""
        holder = self.agents.pop((tenant, agent_id), None)
        if holder is not None:
            task = asyncio.create_task(self.release(holder))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop following and revoke the lease (this agentd's units vanish with it)."""
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        if self.session is not None:
            await self.session.close()


#: A unit of a run that does not exist this long after it was taken belongs to a StartRun that died between
#: taking it and creating the run (ms); the next acquisition at the limit gives it back.
ORPHAN_MS = 60_000


class RunQuota:
    """``max_concurrent_runs``, exactly and cluster-wide: one unit per run that has not ended.

    The unit is the key ``usage/<tenant>/runs/<run id>`` (no lease: runs are durable, they outlive the
    agentd that started them), taken by :class:`~mabeam.security.quota.CountedQuota` before the run is
    created — a StartRun over the limit creates nothing — and keyed by the run id, so a replay of the
    same StartRun holds the one unit its first attempt took. The unit is given back when the run ends
    (its executor, on any node, sees it end), and, should that be missed (a crash between the end and
    the release), by the next StartRun that finds the tenant at its limit: it reads the runs behind the
    units and frees those that ended (``ended`` answers from the runs store). Its value is the time it
    was taken (ms), so a unit whose run was never created is freed after :data:`ORPHAN_MS`.
    """

    def __init__(self, etcd: EtcdClient, cluster: str,
                 status: Callable[[str], Awaitable[tuple[str, bool] | None]],
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.counted = CountedQuota(etcd, cluster, "max_concurrent_runs")
        #: run id -> (tenant, ended?) from the runs store, or None when there is no such run.
        self.status = status
        self.now_ms = now_ms
        self._locks: dict[str, asyncio.Lock] = {}

    async def acquire(self, tenant: str, run_id: str, what: str) -> None:
        """Take the unit of run ``run_id`` of ``tenant``, or raise QUOTA_EXCEEDED (a ServiceError)."""
        stamp = str(self.now_ms()).encode()
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            try:
                await self.counted.acquire(tenant, run_id, 0, what, stamp)
            except ServiceError as error:
                if error.reason != "QUOTA_EXCEEDED" or not await self._free_ended(tenant):
                    raise
                await self.counted.acquire(tenant, run_id, 0, what, stamp)

    async def _free_ended(self, tenant: str) -> bool:
        """Give back the units of the tenant's runs that ended (or were never created); True if any was."""
        freed = False
        now = self.now_ms()
        for run_id, value in (await self.counted.holders(tenant)).items():
            found = await self.status(run_id)
            if found is None:
                try:
                    stale = now - int(value or b"0") > ORPHAN_MS
                except ValueError:
                    stale = True
            else:
                owner, ended = found
                stale = ended or owner != tenant
            if stale:
                await self.counted.release(tenant, run_id)
                freed = True
        return freed

    async def release(self, tenant: str, run_id: str) -> None:
        """Give back the unit of a run that ended (nothing if it holds none; etcd away: the next sweep)."""
        try:
            await self.counted.release(tenant, run_id)
        except EtcdError as error:
            log.warning("could not give back the run unit of %s (tenant %s): %s", run_id, tenant, error)
