"""Tenant quotas: kept in etcd, followed by every daemon, enforced where the resource is taken.

A tenant's quota is a ``TenantQuota`` at ``/mabeam/<cluster>/quotas/<tenant>`` (set by
``MeshService.SetTenantQuota``; 0 is unlimited). Each daemon follows them live
(:class:`QuotaBook`) and refuses what would go over with RESOURCE_EXHAUSTED / ``QUOTA_EXCEEDED``
and the limit in ErrorInfo metadata (:func:`quota_exceeded`).

Which are exact (docs/security.md, "Quota semantics"):

- **exact, cluster-wide** — ``max_agents`` and ``max_concurrent_runs``: each held unit is a key
  ``usage/<tenant>/<resource>/<holder>``, created by one etcd transaction that also bumps the
  resource's version key and is conditioned on that key's revision being the one its count (and the
  limit) was read at (:class:`CountedQuota`). Of any number of racing acquisitions, only those that
  read a count below the limit *and* saw no other acquisition in between succeed; the rest read
  again. Releases only lower the count, so nothing can overshoot. Agents' units live under their
  agentd's lease (a dead agentd's agents stop counting when the lease expires); runs' units have no
  lease (runs are durable) and are keyed by run id (agentd/quotas.py, ``RunQuota``);
- **exact** — ``max_instances`` (the one active coordinator counts its open instances and takes
  new ones in one step, behind its fence; it keeps a usage unit per open instance for reports),
  ``max_mailbox`` (agentd refuses a spawn asking more and lowers a default to it; meshd lowers
  endpoints' max_pending), the model quotas (they tighten the tenant's model budget, whose ledger is
  a compare-and-swap in etcd);
- **rate-approximate, per node** — ``max_messages_per_second`` and ``max_bytes_per_second``: a
  token bucket per tenant in each meshd (:class:`RateLimiter`), so a tenant sending through N
  nodes may reach N times the rate.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from mabeam import keys
from mabeam.errors import ServiceError
from mabeam.etcd.client import (
    EtcdClient,
    EtcdError,
    cmp_create_revision,
    cmp_mod_revision,
    op_count,
    op_get,
    op_put,
)
from mabeam.v1 import common_pb2, mesh_pb2

log = logging.getLogger("mabeam.security")

#: The limits of a TenantQuota and whether each is counted exactly cluster-wide (else a per-node rate).
QUOTAS: dict[str, bool] = {"max_agents": True, "max_mailbox": True, "max_concurrent_runs": True,
                           "max_messages_per_second": False, "max_bytes_per_second": False,
                           "max_instances": True, "model_max_tokens": True, "model_max_cost_nusd": True}

#: Resource names under ``usage/<tenant>/`` for the quotas counted with holder keys.
RESOURCES = {"max_agents": "agents", "max_concurrent_runs": "runs", "max_instances": "instances"}


def quota_exceeded(tenant: str, quota: str, limit: float, used: float, what: str) -> ServiceError:
    """RESOURCE_EXHAUSTED / QUOTA_EXCEEDED for ``what``, with the tenant, quota, limit and use in ErrorInfo."""
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"tenant {tenant!r} is at its quota {quota} = {limit:g} ({used:g} in use): {what} refused; "
                        "free some, or ask an admin to raise it (meshctl tenant quota)", "QUOTA_EXCEEDED",
                        metadata={"tenant": tenant, "quota": quota, "limit": f"{limit:g}", "used": f"{used:g}"})


@dataclass
class QuotaBook:
    """Every tenant's quota as this daemon knows it (followed from etcd by :meth:`follow`)."""

    quotas: dict[str, mesh_pb2.TenantQuota] = field(default_factory=dict)
    #: Called with the tenant whenever a tenant's quota changes (daemons re-apply clamps, rates).
    on_change: Callable[[str], None] | None = None

    def get(self, tenant: str) -> mesh_pb2.TenantQuota:
        """The tenant's quota (all unlimited when none is set)."""
        return self.quotas.get(tenant) or mesh_pb2.TenantQuota(tenant=tenant)

    def limit(self, tenant: str, quota: str) -> float:
        """One limit of a tenant (0: unlimited)."""
        found = self.quotas.get(tenant)
        return float(getattr(found, quota)) if found is not None else 0.0

    def set(self, quota: mesh_pb2.TenantQuota) -> None:
        """Record a tenant's quota (from etcd, or directly in tests)."""
        self.quotas[quota.tenant] = quota
        if self.on_change is not None:
            self.on_change(quota.tenant)

    def _forget(self, tenant: str) -> None:
        if self.quotas.pop(tenant, None) is not None and self.on_change is not None:
            self.on_change(tenant)

    async def follow(self, etcd: EtcdClient, cluster: str) -> None:
        """Keep the book equal to etcd's ``quotas/`` until cancelled (etcd away: the last quotas stay)."""
        prefix = keys.quotas(cluster)
        while True:
            try:
                kvs, revision = await etcd.get_prefix(prefix)
                seen = set()
                for kv in kvs:
                    quota = _parse(kv.value)
                    if quota is not None:
                        seen.add(quota.tenant)
                        self.set(quota)
                for tenant in set(self.quotas) - seen:
                    self._forget(tenant)
                async for batch in etcd.watch_prefix(prefix, revision + 1):
                    for event in batch.events:
                        if event.kind == "delete":
                            self._forget(event.kv.key[len(prefix):].decode(errors="replace"))
                        elif (quota := _parse(event.kv.value)) is not None:
                            self.set(quota)
            except EtcdError as error:
                log.debug("quotas in etcd: %s; reading again shortly", error)
                await asyncio.sleep(0.5)


def _parse(value: bytes) -> mesh_pb2.TenantQuota | None:
    quota = mesh_pb2.TenantQuota()
    try:
        quota.ParseFromString(value)
    except Exception:  # noqa: BLE001 - a bad value is skipped, never fatal
        log.warning("a tenant quota in etcd does not parse; skipped")
        return None
    return quota if quota.tenant else None


async def read_quota(etcd: EtcdClient, cluster: str, tenant: str) -> mesh_pb2.TenantQuota:
    """A tenant's quota as etcd holds it now (all unlimited when none is set)."""
    kv = await etcd.get(keys.quota(cluster, tenant))
    return (_parse(kv.value) if kv is not None else None) or mesh_pb2.TenantQuota(tenant=tenant)


async def write_quota(etcd: EtcdClient, cluster: str, quota: mesh_pb2.TenantQuota) -> int:
    """Store a tenant's quota, and create the tenant if it does not exist (one transaction); its revision."""
    tenant_key = keys.tenant(cluster, quota.tenant)
    result = await etcd.txn([cmp_create_revision(tenant_key, 0)],
                   [op_put(tenant_key, common_pb2.Tenant(tenant_id=quota.tenant).SerializeToString()),
                    op_put(keys.quota(cluster, quota.tenant), quota.SerializeToString())],
                   [op_put(keys.quota(cluster, quota.tenant), quota.SerializeToString())])
    return result.revision


class CountedQuota:
    """An exactly counted, cluster-wide quota (see the module docstring): holder keys and one etcd transaction.

    ``acquire`` takes one unit for ``holder`` (under ``lease``, 0 for none) or raises QUOTA_EXCEEDED;
    ``release`` gives it back. The limit is read in the same etcd read as the count, so a quota just set
    holds from the next acquisition on, on every node. Units are recorded even without a limit, so usage is always visible.
    """

    #: Attempts before giving up under contention (each failed one means another acquisition won).
    MAX_ATTEMPTS = 500

    def __init__(self, etcd: EtcdClient, cluster: str, quota: str) -> None:
        self.etcd = etcd
        self.cluster = cluster
        self.quota = quota
        self.resource = RESOURCES[quota]

    async def acquire(self, tenant: str, holder: str, lease: int = 0, what: str = "", value: bytes = b"") -> None:
        """Take one unit for ``holder`` (its key holds ``value``); QUOTA_EXCEEDED at the tenant's ``limit``."""
        version = keys.usage_version(self.cluster, tenant, self.resource)
        holders = keys.usage_holders(self.cluster, tenant, self.resource)
        mine = keys.usage_holder(self.cluster, tenant, self.resource, holder)
        limit, count = 0.0, 0
        for attempt in range(self.MAX_ATTEMPTS):
            read = await self.etcd.txn([], [op_get(version), op_get(mine), op_count(holders),
                                            op_get(keys.quota(self.cluster, tenant))])
            seen, held, count = read.ranges[0], read.ranges[1], read.counts[2]
            if held:
                return  # already holds a unit (a retried request): idempotent
            # The quota as etcd holds it now (not as the watch last told): a limit just set holds at once.
            stored = _parse(read.ranges[3][0].value) if read.ranges[3] else None
            limit = float(getattr(stored, self.quota)) if stored is not None else 0.0
            if limit and count >= limit:
                raise quota_exceeded(tenant, self.quota, limit, count, what or f"another {self.resource[:-1]}")
            guard = cmp_mod_revision(version, seen[0].mod_revision) if seen else cmp_create_revision(version, 0)
            done = await self.etcd.txn([guard, cmp_create_revision(mine, 0)],
                                       [op_put(version, str(count + 1).encode()), op_put(mine, value, lease)])
            if done.succeeded:
                return
            # Another acquisition (or release-and-acquire) got in between: read the count again.
            await asyncio.sleep(random.random() * min(0.002 * (attempt + 1), 0.02))
        raise ServiceError(grpc.StatusCode.ABORTED, f"too much contention on tenant {tenant!r}'s {self.resource} "
                           "quota; retry", "QUOTA_EXCEEDED", retry_after_s=0.1,
                           metadata={"tenant": tenant, "quota": self.quota, "limit": f"{limit:g}",
                                     "used": f"{count:g}"})

    async def release(self, tenant: str, holder: str) -> None:
        """Give back ``holder``'s unit (no error if it holds none)."""
        await self.etcd.delete(keys.usage_holder(self.cluster, tenant, self.resource, holder))

    async def holders(self, tenant: str) -> dict[str, bytes]:
        """Every unit the tenant holds now: holder -> the value its key holds."""
        prefix = keys.usage_holders(self.cluster, tenant, self.resource)
        kvs, _ = await self.etcd.get_prefix(prefix)
        return {kv.key[len(prefix):].decode(errors="replace"): kv.value for kv in kvs}

    async def used(self, tenant: str) -> int:
        """How many units the tenant holds now."""
        read = await self.etcd.txn([], [op_count(keys.usage_holders(self.cluster, tenant, self.resource))])
        return read.counts[0]


class QuotaSource(Protocol):
    """Anything with every tenant's current quota by tenant (a :class:`QuotaBook`, meshd's cluster view)."""

    @property
    def quotas(self) -> Mapping[str, mesh_pb2.TenantQuota]:
        """Tenant -> quota."""
        ...


class RateLimiter:
    """Per-tenant token buckets for messages and bytes per second (pure: the clock is passed in).

    ``admit(tenant, size, now)`` spends one message and ``size`` bytes from the tenant's buckets and
    returns None, or returns (quota, limit) when a bucket cannot pay: the message is refused. Buckets
    hold one second of their rate (bursts up to the rate are fine). ``rates`` counts what was admitted
    over the last whole second, for usage reports.
    """

    def __init__(self, book: QuotaSource) -> None:
        self.book = book
        self._buckets: dict[str, list[float]] = {}  # tenant -> [messages, bytes, last time]
        self._window: dict[str, list[float]] = {}  # tenant -> [second, messages, bytes, prev messages, prev bytes]

    def admit(self, tenant: str, size: int, now: float) -> tuple[str, float] | None:
        """Spend a message of ``size`` bytes for ``tenant``; None if admitted, else the (quota, limit) hit."""
        quota = self.book.quotas.get(tenant)
        if quota is not None and (quota.max_messages_per_second or quota.max_bytes_per_second):
            rate_m, rate_b = quota.max_messages_per_second, quota.max_bytes_per_second
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = [rate_m, rate_b, now]
            elapsed = max(0.0, now - bucket[2])
            bucket[2] = now
            if rate_m:
                bucket[0] = min(rate_m, bucket[0] + elapsed * rate_m)
                if bucket[0] < 1:
                    return "max_messages_per_second", rate_m
            if rate_b:
                bucket[1] = min(rate_b, bucket[1] + elapsed * rate_b)
                if bucket[1] < size:
                    return "max_bytes_per_second", rate_b
            bucket[0] -= 1 if rate_m else 0
            bucket[1] -= size if rate_b else 0
        self._count(tenant, size, now)
        return None

    def _count(self, tenant: str, size: int, now: float) -> None:
        second = float(int(now))
        window = self._window.get(tenant)
        if window is None or window[0] != second:
            previous = (window[1], window[2]) if window is not None and window[0] == second - 1 else (0.0, 0.0)
            window = self._window[tenant] = [second, 0.0, 0.0, *previous]
        window[1] += 1
        window[2] += size

    def rates(self, tenant: str, now: float) -> tuple[float, float]:
        """(messages, bytes) the tenant sent in the last whole second."""
        window = self._window.get(tenant)
        if window is None:
            return 0.0, 0.0
        second = float(int(now))
        if window[0] == second:
            return window[3], window[4]
        if window[0] == second - 1:
            return window[1], window[2]
        return 0.0, 0.0
