"""The janitor: one per cluster, elected through :class:`mabeam.etcd.election.Election` (role ``runs-janitor``).

While it leads, it finds runs that have not ended and whose executor lease is gone
— the executor died (kill -9, a lost host) or handed the run back on shutdown —
and resumes each on the live agentd that executes the fewest runs (the janitor's
own node on a tie), through the normal lease path. Another node is asked through
etcd (``runs/assign/<node>/<run_id>``, under the janitor's lease; every agentd
watches its own prefix); a node that has not taken the run within
``lease_ttl + janitor_interval_s`` is passed over and the janitor resumes it itself.
The live agentd are the janitor's candidates (every agentd campaigns), less the
nodes whose runs were just orphaned (presumed dead: their candidacy may outlive
their run leases by a moment). The new executor
claims the run with a fresh fencing token (``run.executor_lost`` first when the old
one never released it) and continues from the last checkpoint plus the events after
it; past ``max_recoveries`` the claim fails the run deterministically
(``recovery_budget_exhausted``). A run still ``pending`` (its starter died before
claiming it) is taken over after ``pending_grace_s``.

It reacts at once to an executor key being deleted (a watch on ``runs/executors/``)
and sweeps every ``janitor_interval_s`` as a backstop; each sweep also applies the
retention policy to the runs that have not ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from mabeam import keys
from mabeam.etcd.client import EtcdError
from mabeam.etcd.election import Election, ElectionLost
from mabeam.etcd.session import Session

if TYPE_CHECKING:
    from agentd.runs.manager import RunManager

log = logging.getLogger("agentd.runs.janitor")
ROLE = "runs-janitor"


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


class Janitor:
    """The candidacy and, while leading, the recovery loop (see the module docstring)."""

    def __init__(self, manager: RunManager) -> None:
        self.manager = manager
        self.leading = False
        self.sweeps = 0
        self.recovered = 0
        self._election: Election | None = None
        self._session: Session | None = None
        self._kick = asyncio.Event()
        self._stopped = False
        #: Runs handed to another node: run_id → (node_id, when, monotonic); forgotten once the run is held.
        self._assigned: dict[str, tuple[str, float]] = {}
        #: How many runs were handed to another node, and how many of those the janitor took back
        #: (``recovered`` counts the runs it resumed on its own node).
        self.assigned = 0
        self.taken_back = 0

    async def run(self) -> None:
        """Campaign, lead until the lease is lost, campaign again; until cancelled."""
        manager = self.manager
        while not self._stopped:
            try:
                session = await Session.open(manager.etcd, manager.config.lease_ttl)
            except EtcdError as error:
                log.warning("janitor: cannot open an etcd session (%s); retrying", error)
                await asyncio.sleep(0.5)
                continue
            self._session = session
            value = json.dumps({"node_id": manager.node_id}).encode()
            self._election = election = Election(manager.etcd, session, keys.election(manager.cluster, ROLE), value)
            try:
                async with asyncio.TaskGroup() as group:
                    keepalive = group.create_task(session.keepalive())
                    await election.campaign()
                    self.leading = True
                    log.info("janitor: %s leads (term %d)", manager.node_id, election.term)
                    lead = group.create_task(self._lead(election))
                    await keepalive  # returns when the lease is lost
                    lead.cancel()
            except* (ElectionLost, EtcdError) as group:
                log.warning("janitor: candidacy ended (%r); campaigning again", _leaf(group))
            finally:
                self.leading = False
                with contextlib.suppress(EtcdError):
                    await session.close(revoke=True)
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """Resign (the next candidate leads at once)."""
        self._stopped = True
        if self._election is not None and self.leading:
            with contextlib.suppress(EtcdError):
                await self._election.resign()
        if self._session is not None:
            with contextlib.suppress(EtcdError):
                await self._session.close(revoke=True)
        self.leading = False

    async def _lead(self, election: Election) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch_executors())
            while election.is_leader:
                self._kick.clear()
                try:
                    await self.sweep()
                except Exception:  # a failed sweep (store or etcd away) is retried at the next one
                    log.exception("janitor: sweep failed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.manager.config.janitor_interval_s):
                        await self._kick.wait()
            raise ElectionLost("no longer the janitor")

    async def _watch_executors(self) -> None:
        prefix = keys.run_executors(self.manager.cluster)
        while True:
            try:
                revision = await self.manager.etcd.revision()
                async for batch in self.manager.etcd.watch_prefix(prefix, revision + 1):
                    if any(event.kind == "delete" for event in batch.events):
                        self._kick.set()
            except EtcdError:
                await asyncio.sleep(0.2)

    async def _live_nodes(self) -> set[str]:
        """The agentd campaigning for janitor (every live one does), this node included."""
        manager = self.manager
        found, _ = await manager.etcd.get_prefix(keys.election(manager.cluster, ROLE))
        live = {manager.node_id}
        for kv in found:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                live.add(str(json.loads(kv.value)["node_id"]))
        return live

    async def sweep(self) -> int:
        """Resume every run whose executor is gone; apply retention. Returns how many runs were taken over."""
        manager = self.manager
        self.sweeps += 1
        active = await manager.store.active_runs()
        if not active:
            self._assigned.clear()
            return 0
        held, _ = await manager.etcd.get_prefix(keys.run_executors(manager.cluster))
        holders = {kv.key.rsplit(b"/", 1)[-1].decode() for kv in held}
        load: Counter[str] = Counter()
        for kv in held:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                load[str(json.loads(kv.value)["node_id"])] += 1
        now_ms = int(time.time() * 1000)
        taken = 0
        policy = manager.config.retention()
        orphans = []
        for run in active:
            if policy.payload_ttl_s or policy.history_ttl_s is not None:
                with contextlib.suppress(Exception):
                    await manager.store.retain(run.run_id, policy, now_ms)
            if run.run_id in holders or run.run_id in manager.executors:
                self._assigned.pop(run.run_id, None)
                continue
            if run.status == "pending" and not run.executor_token and \
                    now_ms - run.updated_ms < manager.config.pending_grace_s * 1000:
                continue
            orphans.append(run)
        if not orphans:
            return 0
        live = await self._live_nodes()
        live -= {run.executor_node for run in orphans if run.executor_node != manager.node_id}
        grace = manager.config.lease_ttl + manager.config.janitor_interval_s
        for run in orphans:
            assigned = self._assigned.get(run.run_id)
            if assigned is not None and assigned[0] in live and time.monotonic() - assigned[1] < grace:
                load[assigned[0]] += 1  # asked already; give it time
                continue
            # The least loaded live agentd; this node on a tie (no etcd hop), then by name.
            target = min(live, key=lambda node: (load[node], node != manager.node_id, node))
            if assigned is not None:  # asked before and it did not take it: resume it here
                target = manager.node_id
                self.taken_back += 1
                log.warning("janitor: %s did not resume run %s; resuming it on %s", assigned[0], run.run_id,
                            manager.node_id)
                with contextlib.suppress(EtcdError):
                    await manager.etcd.delete(keys.run_assignment(manager.cluster, assigned[0], run.run_id))
            load[target] += 1
            if target != manager.node_id and await self._assign(run.run_id, target):
                continue
            self._assigned.pop(run.run_id, None)
            log.info("janitor: run %s has no live executor (last on %s); resuming it on %s", run.run_id,
                     run.executor_node or "none", manager.node_id)
            if await manager.execute(run):
                taken += 1
                self.recovered += 1
        return taken

    async def _assign(self, run_id: str, node_id: str) -> bool:
        """Ask ``node_id``'s agentd to resume the run (False if etcd or the janitor's lease is away)."""
        manager = self.manager
        session = self._session
        if session is None:
            return False
        value = json.dumps({"janitor": manager.node_id}).encode()
        try:
            await manager.etcd.put(keys.run_assignment(manager.cluster, node_id, run_id), value, session.lease_id)
        except EtcdError as error:
            log.warning("janitor: cannot hand run %s to %s (%s); resuming it here", run_id, node_id, error)
            return False
        log.info("janitor: run %s has no live executor; asked %s to resume it", run_id, node_id)
        self._assigned[run_id] = (node_id, time.monotonic())
        self.assigned += 1
        return True
