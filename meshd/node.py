"""One meshd's life in etcd: its session, membership, watch, elections and registry writes.

``MeshNode.run`` owns three loops in one TaskGroup:

- the **session loop** opens a lease, claims ``members/<node_id>``, re-registers
  the names and group memberships this node owns, campaigns for the ``mesh``
  role, and keeps the lease alive; if etcd reports the lease gone (a long
  outage, or etcd replaced), it starts over with a new lease;
- the **watch loop** reads the whole cluster prefix, then watches it, feeding
  the pure :class:`~meshd.view.ClusterView` that every lookup is served from;
  when the watch breaks it re-reads (so compaction or a reset etcd is handled
  the same way) and watches again;
- the caller's stop signal, which revokes the lease so the node leaves at once.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import time
from collections.abc import Callable

import grpc

from mabeam import __version__, keys
from mabeam.errors import ServiceError
from mabeam.etcd.client import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    cmp_create_revision,
    cmp_lease,
    op_delete,
    op_get,
    op_put,
)
from mabeam.etcd.election import Election, ElectionLost
from mabeam.etcd.session import Session
from mabeam.startup import StartupError
from mabeam.v1 import common_pb2, mesh_pb2
from meshd.config import MeshdConfig
from meshd.metrics import MeshdMetrics
from meshd.view import Change, ClusterView, LeaderChange, MemberChange

log = logging.getLogger(__name__)

MESH_ROLE = "mesh"


class Subscription:
    """A bounded stream of changes for one watcher; overflow ends it rather than dropping silently."""

    def __init__(self, limit: int = 10_000) -> None:
        self._items: collections.deque[Change] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self.overflowed = False

    def push(self, change: Change) -> None:
        """Queue a change (never blocks the watch loop)."""
        if len(self._items) >= self._limit:
            self.overflowed = True
        else:
            self._items.append(change)
        self._ready.set()

    async def next(self) -> Change:
        """The next change; raises OverflowError if the watcher fell too far behind."""
        while not self._items:
            if self.overflowed:
                raise OverflowError("watcher fell behind by more than its buffer; watch again")
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


def etcd_unavailable(error: Exception) -> ServiceError:
    """The error every registry write answers while etcd cannot be reached."""
    return ServiceError(grpc.StatusCode.UNAVAILABLE, f"etcd is unreachable, retry shortly ({error})",
                        "ETCD_UNAVAILABLE", retry_after_s=1.0)


class MeshNode:
    """The state and etcd-facing behaviour of one meshd."""

    def __init__(self, config: MeshdConfig, metrics: MeshdMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.node_id = config.node_id
        self.metrics = metrics or MeshdMetrics()
        self.client = EtcdClient(config.etcd, timeout=config.etcd_timeout, on_latency=self.metrics.observe_etcd)
        self.view = ClusterView(config.cluster)
        self.info = common_pb2.NodeInfo(node_id=self.node_id, version=__version__,
                                        start_time_unix_ms=int(time.time() * 1000), labels=config.labels)
        self.session: Session | None = None
        self.etcd_connected = False
        self.ready = asyncio.Event()
        self._clock = clock
        self._loaded = asyncio.Event()
        self._stopping = asyncio.Event()
        self._revision_changed = asyncio.Condition()
        self._owned_names: dict[tuple[str, str], mesh_pb2.NameEntry] = {}
        self._owned_groups: dict[bytes, mesh_pb2.GroupMember] = {}
        self._pending_writes: list[tuple[int, float]] = []
        self._member_subs: set[Subscription] = set()
        self._leader_subs: dict[str, set[Subscription]] = {}
        self.on_connected_change: Callable[[bool], None] | None = None
        self.on_member_change: Callable[[MemberChange], None] | None = None
        #: Called with (our entry, the holder's entry) when re-registration finds a name taken by another owner.
        self.on_name_lost: Callable[[mesh_pb2.NameEntry, mesh_pb2.NameEntry], None] | None = None

    # --- lifecycle ---

    async def run(self) -> None:
        """Join the cluster and serve until :meth:`stop`; raises StartupError if it cannot join."""
        try:
            await self.client.wait_connected(self.config.etcd_connect_timeout)
        except EtcdUnavailable:
            raise StartupError(
                f"cannot reach etcd at {','.join(self.config.etcd)} within {self.config.etcd_connect_timeout:g}s; "
                "start etcd or pass --etcd HOST:PORT"
            ) from None
        await self._ensure_tenants()
        registered = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                watch = tg.create_task(self._watch_loop())
                session = tg.create_task(self._session_loop(registered))
                await registered.wait()  # a StartupError in the session loop cancels this wait
                await self._loaded.wait()
                # Ready (and READY=1 to systemd) once this node's own view lists it: read-your-writes.
                async with self._revision_changed:
                    await self._revision_changed.wait_for(lambda: self.node_id in self.view.members)
                self.ready.set()
                await self._stopping.wait()
                session.cancel()
                watch.cancel()
        finally:
            if self.session is not None:
                await self.session.close(revoke=True)
            await self.client.close()

    def stop(self) -> None:
        """Ask :meth:`run` to leave the cluster (revoking the lease) and return."""
        self._stopping.set()

    # --- the session loop: lease, membership, re-registration, campaign ---

    async def _session_loop(self, registered: asyncio.Event) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                session = await Session.open(self.client, self.config.lease_ttl)
            except EtcdError:
                await asyncio.sleep(0.2)
                continue
            self.session = session
            self.info.lease_id = session.lease_id
            try:
                await self._ensure_tenants()  # again: an etcd replaced empty has lost them too
                await self._claim_membership(session, first)
                await self._reregister_owned(session)
            except EtcdError as error:
                log.warning("registration interrupted (%s); retrying with a new lease", error)
                await session.close(revoke=True)
                continue
            first = False
            registered.set()
            log.info("node %s joined cluster %s with lease %x", self.node_id, self.config.cluster, session.lease_id)
            async with asyncio.TaskGroup() as tg:
                campaign = tg.create_task(self._campaign(session))
                await session.keepalive()
                campaign.cancel()
            if not self._stopping.is_set():
                self.metrics.session_losses.inc()
                log.warning("lease %x lost; re-registering node %s", session.lease_id, self.node_id)

    async def _claim_membership(self, session: Session, first: bool) -> None:
        key = keys.member(self.config.cluster, self.node_id)
        value = self.info.SerializeToString()
        # A previous incarnation killed with -9 leaves its key until its lease expires: wait that out.
        deadline = self._clock() + session.ttl + 2
        while True:
            result = await self.client.txn([cmp_create_revision(key, 0)], [op_put(key, value, session.lease_id)],
                                           [op_get(key)])
            if result.succeeded:
                self._note_write(result.revision)
                return
            holder = result.ranges[0][0] if result.ranges and result.ranges[0] else None
            if holder is not None and holder.lease == session.lease_id:
                await self.client.put(key, value, session.lease_id)
                return
            if first and self._clock() > deadline:
                raise StartupError(
                    f"node id {self.node_id!r} is already live in cluster {self.config.cluster!r} "
                    f"(lease {holder.lease if holder else 0:x}); stop that meshd or choose another --node-id"
                )
            await asyncio.sleep(0.2)

    async def _reregister_owned(self, session: Session) -> None:
        """Everything this node owned under its previous lease, again under ``session``'s.

        A name another owner took while our lease had lapsed stays theirs: it is dropped here, logged,
        counted, and its owner is told (``on_name_lost``: meshd notifies the attached endpoint).
        """
        for (tenant, name), entry in list(self._owned_names.items()):
            key = keys.name(self.config.cluster, tenant, name)
            result = await self.client.txn([cmp_create_revision(key, 0)],
                                           [op_put(key, entry.SerializeToString(), session.lease_id)], [op_get(key)])
            if result.succeeded:
                self._note_write(result.revision)
                continue
            holder = mesh_pb2.NameEntry()
            if result.ranges and result.ranges[0]:
                holder.ParseFromString(result.ranges[0][0].value)
            if holder.target.node_id == self.node_id and holder.target.agent_id == entry.target.agent_id:
                continue  # ours already (written under this lease by a concurrent registration)
            self._owned_names.pop((tenant, name), None)
            self.metrics.names_lost.inc()
            log.warning("name %s/%s of agent %s was taken by agent %s on node %s while this node's lease had "
                        "lapsed; it is theirs now and the owner is told", tenant, name, entry.target.agent_id,
                        holder.target.agent_id, holder.target.node_id)
            if self.on_name_lost is not None:
                self.on_name_lost(entry, holder)
        # A snapshot: JoinGroup requests served while we await the puts add to the dict.
        for key, member in list(self._owned_groups.items()):
            revision = await self.client.put(key, member.SerializeToString(), session.lease_id)
            self._note_write(revision)

    async def _campaign(self, session: Session) -> None:
        value = mesh_pb2.LeaderInfo(role=MESH_ROLE, node_id=self.node_id, address=self.info.grpc_address)
        while not session.lost.is_set():
            election = Election(self.client, session, keys.election(self.config.cluster, MESH_ROLE),
                                value.SerializeToString())
            try:
                await election.campaign()
                await session.lost.wait()
                return
            except (EtcdError, ElectionLost) as error:
                log.debug("campaign for %s interrupted: %s", MESH_ROLE, error)
                await asyncio.sleep(0.2)

    async def _ensure_tenants(self) -> None:
        for tenant in self.config.tenants:
            key = keys.tenant(self.config.cluster, tenant)
            await self.client.txn([cmp_create_revision(key, 0)],
                                  [op_put(key, common_pb2.Tenant(tenant_id=tenant).SerializeToString())])

    # --- the watch loop: the view every lookup is served from ---

    async def _watch_loop(self) -> None:
        prefix = keys.root(self.config.cluster)
        while not self._stopping.is_set():
            try:
                kvs, revision = await self.client.get_prefix(prefix)
                await self._publish(self.view.reload(kvs, revision))
                self._loaded.set()
                self._set_connected(True)
                async for batch in self.client.watch_prefix(prefix, revision + 1):
                    await self._publish(self.view.apply(batch))
            except EtcdError as error:
                if self.etcd_connected:
                    log.warning("etcd watch broke (%s); serving from cache and reconnecting", error)
                self._set_connected(False)
                self.metrics.watch_restarts.inc()
                await asyncio.sleep(0.2)

    def _set_connected(self, connected: bool) -> None:
        if connected != self.etcd_connected:
            self.etcd_connected = connected
            self.metrics.etcd_connected.set(1 if connected else 0)
            if self.on_connected_change is not None:
                self.on_connected_change(connected)

    async def _publish(self, changes: list[Change]) -> None:
        for change in changes:
            if isinstance(change, MemberChange):
                if self.on_member_change is not None:
                    self.on_member_change(change)
                for sub in list(self._member_subs):
                    sub.push(change)
            elif isinstance(change, LeaderChange):
                for sub in list(self._leader_subs.get(change.leader.role, ())):
                    sub.push(change)
                role = change.leader.role
                self.metrics.leader_term.labels(role).set(change.leader.term)
                self.metrics.is_leader.labels(role).set(1 if change.leader.node_id == self.node_id else 0)
        self.metrics.members.set(len(self.view.members))
        self.metrics.names.set(len(self.view.names))
        self.metrics.group_members.set(sum(len(g) for g in self.view.groups.values()))
        if self.view.bad_values:
            self.metrics.bad_values.inc(self.view.bad_values)
            self.view.bad_values = 0
        now = time.perf_counter()
        while self._pending_writes and self._pending_writes[0][0] <= self.view.revision:
            self.metrics.watch_lag.observe(now - self._pending_writes.pop(0)[1])
        async with self._revision_changed:
            self._revision_changed.notify_all()

    def _note_write(self, revision: int) -> None:
        if len(self._pending_writes) < 10_000:
            bisect.insort(self._pending_writes, (revision, time.perf_counter()))

    async def wait_revision(self, revision: int, timeout: float = 2.0) -> bool:
        """Wait until the view reflects `revision` (read-your-writes); False on timeout."""
        async def reached() -> None:
            async with self._revision_changed:
                await self._revision_changed.wait_for(lambda: self.view.revision >= revision)
        try:
            async with asyncio.timeout(timeout):  # not wait_for: 3.11's can swallow a cancel
                await reached()
            return True
        except TimeoutError:
            return False

    # --- watchers ---

    def subscribe_members(self) -> Subscription:
        """A stream of member changes from now on (the caller sends the snapshot first)."""
        sub = Subscription()
        self._member_subs.add(sub)
        return sub

    def subscribe_leader(self, role: str) -> Subscription:
        """A stream of leader changes of `role` from now on."""
        sub = Subscription()
        self._leader_subs.setdefault(role, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop feeding a subscription."""
        self._member_subs.discard(sub)
        for subs in self._leader_subs.values():
            subs.discard(sub)

    # --- registry writes (validated by the caller) ---

    async def _live_session(self, wait: float = 2.0) -> Session:
        """The current session once it is alive; waits up to `wait` s right after an outage, then UNAVAILABLE."""
        if not self.etcd_connected:
            # Fail fast rather than hold the caller while gRPC waits for etcd to come back.
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "etcd is unreachable right now; retry shortly",
                               "ETCD_UNAVAILABLE", retry_after_s=1.0)
        deadline = self._clock() + wait
        while True:
            session = self.session
            if session is not None and not session.lost.is_set() and not session.expired_locally:
                return session
            if self._clock() >= deadline:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE,
                                   "this node is not registered in etcd right now (etcd outage?); retry shortly",
                                   "ETCD_UNAVAILABLE", retry_after_s=1.0)
            # Just after etcd returns, the keepalive (or re-registration) is a moment behind the watch.
            await asyncio.sleep(0.05)

    def require_tenant(self, tenant: str) -> None:
        """NOT_FOUND unless the tenant is defined in the cluster."""
        if tenant not in self.view.tenants:
            known = ", ".join(sorted(self.view.tenants)) or "none"
            raise ServiceError(grpc.StatusCode.NOT_FOUND,
                               f"tenant {tenant!r} is not defined in cluster {self.config.cluster!r} "
                               f"(known: {known}); add it to a meshd's 'tenants' config", "UNKNOWN_TENANT")

    async def register_name(self, tenant: str, name: str, agent_id: str,
                            metadata: dict[str, str]) -> mesh_pb2.NameEntry:
        """Claim a cluster-unique name for an agent on this node (one etcd transaction)."""
        self.require_tenant(tenant)
        session = await self._live_session()
        entry = mesh_pb2.NameEntry(tenant=tenant, name=name, metadata=metadata,
                                   target=common_pb2.AgentRef(tenant=tenant, node_id=self.node_id, agent_id=agent_id))
        key = keys.name(self.config.cluster, tenant, name)
        try:
            result = await self.client.txn([cmp_create_revision(key, 0)],
                                           [op_put(key, entry.SerializeToString(), session.lease_id)], [op_get(key)])
        except EtcdError as error:
            raise etcd_unavailable(error) from None
        if result.succeeded:
            self._owned_names[(tenant, name)] = entry
            self._note_write(result.revision)
            await self.wait_revision(result.revision)
            entry.revision = result.revision
            return entry
        existing = mesh_pb2.NameEntry()
        holder = result.ranges[0][0] if result.ranges and result.ranges[0] else None
        if holder is not None:
            existing.ParseFromString(holder.value)
            existing.revision = holder.create_revision
            if existing.target.node_id == self.node_id and existing.target.agent_id == agent_id \
                    and dict(existing.metadata) == metadata:
                # The same registration again: idempotent. Left by a previous incarnation of this node (meshd
                # restarted, its old lease not yet expired)? Move it under our lease, or it would expire with it.
                if holder.lease != session.lease_id:
                    try:
                        moved = await self.client.txn([cmp_lease(key, holder.lease)],
                                                      [op_put(key, entry.SerializeToString(), session.lease_id)])
                    except EtcdError as error:
                        raise etcd_unavailable(error) from None
                    if moved.succeeded:
                        self._note_write(moved.revision)
                        await self.wait_revision(moved.revision)
                self._owned_names[(tenant, name)] = entry
                return existing
        raise ServiceError(grpc.StatusCode.ALREADY_EXISTS,
                           f"name {name!r} in tenant {tenant!r} is already registered to agent "
                           f"{existing.target.agent_id!r} on node {existing.target.node_id!r}", "NAME_TAKEN")

    def owned_name(self, tenant: str, name: str) -> mesh_pb2.NameEntry | None:
        """The entry of a name this node registered, known from the write (the view may not show it yet)."""
        return self._owned_names.get((tenant, name))

    async def unregister_name(self, tenant: str, name: str) -> None:
        """Remove a name this node owns (NOT_FOUND if absent, FAILED_PRECONDITION if another node owns it)."""
        self.require_tenant(tenant)
        session = await self._live_session()
        key = keys.name(self.config.cluster, tenant, name)
        try:
            result = await self.client.txn([cmp_lease(key, session.lease_id)], [op_delete(key)], [op_get(key)])
        except EtcdError as error:
            raise etcd_unavailable(error) from None
        if result.succeeded:
            self._owned_names.pop((tenant, name), None)
            self._note_write(result.revision)
            await self.wait_revision(result.revision)
            return
        if not result.ranges or not result.ranges[0]:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"name {name!r} is not registered in tenant {tenant!r}",
                               "NOT_REGISTERED")
        owner = mesh_pb2.NameEntry()
        owner.ParseFromString(result.ranges[0][0].value)
        raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                           f"name {name!r} is owned by node {owner.target.node_id!r}; unregister it through that node",
                           "WRONG_NODE")

    async def join_group(self, tenant: str, group: str, agent_id: str, metadata: dict[str, str]) -> None:
        """Add an agent of this node to a group (idempotent)."""
        self.require_tenant(tenant)
        session = await self._live_session()
        member = mesh_pb2.GroupMember(tenant=tenant, group=group, metadata=metadata,
                                      member=common_pb2.AgentRef(tenant=tenant, node_id=self.node_id,
                                                                 agent_id=agent_id))
        key = keys.group_member(self.config.cluster, tenant, group, self.node_id, agent_id)
        try:
            revision = await self.client.put(key, member.SerializeToString(), session.lease_id)
        except EtcdError as error:
            raise etcd_unavailable(error) from None
        self._owned_groups[key] = member
        self._note_write(revision)
        await self.wait_revision(revision)

    async def leave_group(self, tenant: str, group: str, agent_id: str) -> bool:
        """Remove an agent of this node from a group; False if it was not a member."""
        self.require_tenant(tenant)
        await self._live_session()
        key = keys.group_member(self.config.cluster, tenant, group, self.node_id, agent_id)
        self._owned_groups.pop(key, None)
        try:
            result = await self.client.txn([cmp_create_revision(key, 0, "GREATER")], [op_delete(key)])
        except EtcdError as error:
            raise etcd_unavailable(error) from None
        if result.succeeded:
            self._note_write(result.revision)
            await self.wait_revision(result.revision)
        return result.succeeded
