"""agentd's share of the tenant quotas: the agents it starts count against ``max_agents``, exactly.

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

from mabeam import keys
from mabeam.etcd.client import EtcdClient, EtcdError, op_put
from mabeam.etcd.session import Session
from mabeam.security.quota import CountedQuota, QuotaBook

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
        self.counted = CountedQuota(etcd, cluster, "max_agents", self.book)
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
