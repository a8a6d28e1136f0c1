"""Active/standby: campaign for the ``coordinator`` role, run an :class:`Engine` while leading.

Every node runs this loop. A standby campaigns (waiting on its predecessor's
key) and answers requests with the leader's address. When it wins, it builds
a fresh engine: a fenced committer, a full reload from etcd, a fenced
"leader" write that claims the term, then ticks that close whatever fell due.
The term ends when the lease is lost (etcd says so, or no keepalive succeeded
for a whole TTL), or when a commit fails (the in-memory state may be ahead of
etcd); the node then revokes its lease, drops all state and campaigns again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import grpc

from coordinator import keys
from coordinator.config import CoordinatorConfig
from coordinator.engine import Engine
from coordinator.metrics import CoordinatorMetrics
from coordinator.store import Committer
from mabeam.errors import ServiceError
from mabeam.etcd.client import EtcdClient, EtcdError
from mabeam.etcd.election import Election, ElectionLost, leader_of
from mabeam.etcd.session import Session

log = logging.getLogger(__name__)


class WrongNode(ServiceError):
    """UNAVAILABLE with reason WRONG_NODE and the leader's address in ErrorInfo metadata["leader"]."""

    def __init__(self, leader_address: str, leader_node: str) -> None:
        where = f"{leader_node} at {leader_address}" if leader_address else "not known yet (election in progress)"
        super().__init__(grpc.StatusCode.UNAVAILABLE, f"this coordinator is a standby; the leader is {where}",
                         "WRONG_NODE", retry_after_s=0.2,
                         metadata={"leader": leader_address, "leader_node": leader_node})
        self.leader_address = leader_address
        self.leader_node = leader_node


class CoordinatorNode:
    """One node's coordinator: its etcd client, candidacy and (while leading) its engine."""

    def __init__(self, config: CoordinatorConfig, address: str = "", metrics: CoordinatorMetrics | None = None) -> None:
        self.config = config
        self.address = address
        self.metrics = metrics or CoordinatorMetrics()
        self.client = EtcdClient(config.etcd, timeout=config.etcd_timeout)
        self.engine: Engine | None = None
        self.election: Election | None = None
        #: This term's candidacy, from the moment it is created (``term > 0`` once its key is in etcd).
        self.candidacy: Election | None = None
        self.term = 0
        self.ready = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def leading(self) -> Engine | None:
        """The engine, only while this node leads and its lease is not locally expired."""
        engine, election = self.engine, self.election
        if engine is None or election is None or not election.is_leader or engine.committer.broken.is_set():
            return None
        return engine

    async def leader(self) -> tuple[str, str, int]:
        """The current leader's (node_id, address, term) as etcd sees it ("" when none)."""
        candidates, _ = await self.client.get_prefix(keys.election(self.config.cluster))
        first = leader_of(candidates)
        if first is None:
            return "", "", 0
        try:
            info = json.loads(first.value)
        except ValueError:
            return "", "", 0
        return str(info.get("node_id", "")), str(info.get("address", "")), first.create_revision

    async def redirect(self) -> WrongNode:
        """The WRONG_NODE error naming the leader (best effort if etcd is unreachable)."""
        try:
            node, address, _ = await self.leader()
        except EtcdError:
            node, address = "", ""
        if node == self.config.node_id:
            node, address = "", ""  # our own stale candidacy: the new leader is not known yet
        return WrongNode(address, node)

    async def run(self) -> None:
        """Campaign and lead until :meth:`stop`."""
        await self.client.wait_connected(self.config.etcd_connect_timeout)
        self.ready.set()
        while not self._stopping.is_set():
            try:
                await self._one_term()
            except* (EtcdError, ElectionLost) as group:
                log.warning("coordinator term ended: %s", group.exceptions[0])
            if not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):  # not wait_for: 3.11's can swallow a cancel
                        await self._stopping.wait()
        await self.client.close()

    async def _one_term(self) -> None:
        session = await Session.open(self.client, self.config.lease_ttl)
        value = json.dumps({"node_id": self.config.node_id, "address": self.address}).encode()
        election = Election(self.client, session, keys.election(self.config.cluster), value)
        self.candidacy = election
        committer: Committer | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                keepalive = tg.create_task(session.keepalive())
                campaign = tg.create_task(election.campaign())
                stop = tg.create_task(self._stopping.wait())
                lost = tg.create_task(session.lost.wait())
                await asyncio.wait({campaign, stop, lost}, return_when=asyncio.FIRST_COMPLETED)
                if not campaign.done() or campaign.exception() is not None:
                    for task in (campaign, stop, lost, keepalive):
                        task.cancel()
                    return
                term = campaign.result()
                metrics = self.metrics
                committer = Committer(self.client, election.fence(), on_commit=metrics.observe_commit,
                                      on_failure=metrics.commit_failures.inc)
                engine = Engine(self.client, self.config.cluster, committer, term, metrics=metrics)
                await engine.load()
                commits = tg.create_task(committer.run())
                timers = tg.create_task(engine.run())
                await engine.start(self.config.node_id, self.address)
                self.election, self.engine, self.term = election, engine, term
                log.info("coordinator %s leads with term %d", self.config.node_id, term)
                metrics.terms.inc()
                watchdog = tg.create_task(self._watch_lease(election))
                broken = tg.create_task(committer.broken.wait())
                await asyncio.wait({stop, lost, watchdog, broken}, return_when=asyncio.FIRST_COMPLETED)
                log.warning("coordinator %s ends term %d (stopping=%s lost=%s broken=%s)", self.config.node_id,
                            term, stop.done(), lost.done() or watchdog.done(), committer.reason)
                reason = ("stopping" if stop.done() else "lease_lost" if lost.done() or watchdog.done()
                          else "commit_failed")
                metrics.term_ends[reason].inc()
                for task in (keepalive, stop, lost, commits, timers, watchdog, broken):
                    task.cancel()
        finally:
            self.engine = None
            self.election = None
            self.candidacy = None
            if committer is not None:
                committer.close()
            await session.close(revoke=True)

    @staticmethod
    async def _watch_lease(election: Election) -> None:
        # is_leader turns false by the clock (no keepalive for a TTL), so there is no event to wait on.
        while election.is_leader:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    @property
    def standing(self) -> bool:
        """True while this node leads or its candidacy is in etcd (a standby ready to take over)."""
        return self.leading is not None or (self.candidacy is not None and self.candidacy.term > 0)

    def stop(self) -> None:
        """Resign and stop campaigning."""
        self._stopping.set()
