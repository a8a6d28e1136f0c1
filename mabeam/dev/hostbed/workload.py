"""The workload every bed scenario runs, and the checks of its invariants.

::

    workload = Workload(bed)
    await workload.start()                  # agents + auctions + a load generator per host
    await workload.wait_progress()          # every host's calls, bids, names and joins succeed
    healed_at = ...fault, wait for its effect, heal...
    await workload.check_healed(healed_at)  # names/groups converged and calls work by heal + TTL + 2 s
    await workload.finish()                 # stop the load, then every invariant over everything recorded

On each host: a ``counter`` agent ``ctr-<host>`` (checkpointed, so a restarted
agentd restores it), a ``relay`` agent ``relay-<host>`` through which the
host's load calls every counter, and a ``member`` agent in group ``bed``;
a sealed auction ``auc-<host>``; and a load generator
(:mod:`mabeam.dev.hostbed.load`) in the host's namespace. Timing bounds are
the invariants' own (TTL + 2 s) times ``MABEAM_SLOW_FACTOR`` (default 1), for
machines slower than the 2-core CI VM.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mabeam.dev.hostbed.bed import Host, HostBed
from mabeam.dev.hostbed.invariants import (
    Expectation,
    HistoryEvent,
    bid_violations,
    counter_violations,
    failure_violations,
    fencing_violations,
    registry_expectation,
    registry_violations,
)
from mabeam.dev.hostbed.launch import LaunchSpec
from mabeam.dev.hostbed.load import LoadSpec, Record
from mabeam.dev.hostbed.processes import Daemon
from mabeam.etcd.client import EtcdClient, EtcdError

GROUP = "bed"
SENTINEL = "zz-hostbed-sentinel"


def slow_factor() -> float:
    """``MABEAM_SLOW_FACTOR`` (>= 1): how much slower than the reference machine this one may be."""
    try:
        return max(1.0, float(os.environ.get("MABEAM_SLOW_FACTOR", "1")))
    except ValueError:
        return 1.0


class InvariantViolated(AssertionError):
    """One or more invariants failed; the message lists each and ends with the bed's report."""


class Workload:
    """Agents, auctions and load generators on a bed, and the invariant checks (see the module docstring)."""

    def __init__(self, bed: HostBed, call_timeout: float = 2.0) -> None:
        self.bed = bed
        self.call_timeout = call_timeout
        self.slow = slow_factor()
        self.loads: dict[str, Daemon] = {}
        self.load_starts: dict[str, int] = {}
        self.expected_agent_names: set[str] = set()
        self.problems: list[str] = []

    # -- set-up -----------------------------------------------------------------------------------

    @property
    def convergence_bound(self) -> float:
        """TTL + 2 s (times the slow factor): how long after a heal names, groups and calls may take."""
        return (self.bed.lease_ttl + 2.0) * self.slow

    def counter(self, host: Host) -> str:
        """The counter agent's name on a host."""
        return f"ctr-{host.name}"

    def auction(self, host: Host) -> str:
        """The host's auction id."""
        return f"auc-{host.name}"

    async def start(self) -> None:
        """Spawn the agents, create the auctions and start a load generator on every host."""
        from mabeam_client.coordinator import CoordinatorClient

        for host in self.bed.hosts:
            await self.spawn_agents(host)
        async with CoordinatorClient(self.bed.endpoints("coordinator"), failover_timeout=30.0) as coordinator:
            for host in self.bed.hosts:
                await coordinator.create_auction("sealed", {"pricing": "second"}, instance_id=self.auction(host))
        await self.wait_registry_converged(self.bed.note("agents spawned, auctions created"), exact=False)
        for host in self.bed.hosts:
            self.start_load(host)

    async def spawn_agents(self, host: Host) -> None:
        """Start (or, after an agentd restart, start again) the host's counter, relay and group member."""
        from mabeam_client.agents import AgentClient

        async with AgentClient(host.endpoint("agentd"), timeout=10.0) as agents:
            await agents.spawn("counter", {}, name=self.counter(host), restart="permanent",
                               child_id=self.counter(host))
            await agents.spawn("relay", {}, name=f"relay-{host.name}", restart="permanent",
                               child_id=f"relay-{host.name}")
            await agents.spawn("member", {"groups": [GROUP]}, restart="permanent", child_id=f"member-{host.name}")
        self.expected_agent_names |= {self.counter(host), f"relay-{host.name}"}

    def start_load(self, host: Host) -> None:
        """Start the host's load generator in its namespace and wait for it to be ready."""
        starts = self.load_starts[host.name] = self.load_starts.get(host.name, 0) + 1
        spec = LoadSpec(host=host.name, agentd=host.endpoint("agentd"), meshd=host.endpoint("meshd"),
                        coordinators=self.bed.endpoints("coordinator"), auction=self.auction(host),
                        relay=f"relay-{host.name}", targets=[self.counter(h) for h in self.bed.hosts],
                        out=str(self._records_path(host)), call_timeout=self.call_timeout,
                        first=1_000_000 * (starts - 1))  # a restarted generator's operations are new ones
        daemon = Daemon(host.name, "load", host.context.directory / "load.log", host.net.exec_prefix())
        assert self.bed.security is not None
        daemon.start(LaunchSpec(argv=[self.bed_python(), "-m", "mabeam.dev.hostbed.load", json.dumps(asdict(spec))],
                                env=self.bed.security.env(), ready_line="load ready"))
        daemon.wait_ready(30.0 * self.slow)
        self.loads[host.name] = daemon

    def bed_python(self) -> str:
        """The interpreter the bed's launcher uses (the load runs in the same environment)."""
        import sys

        return getattr(self.bed.launcher, "python", sys.executable)

    def _records_path(self, host: Host) -> Path:
        return host.context.directory / "load.jsonl"

    def records(self) -> list[Record]:
        """Every operation every load generator has finished so far."""
        out = []
        for host in self.bed.hosts:
            path = self._records_path(host)
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                if line.endswith("}"):
                    out.append(Record(**json.loads(line)))
        return out

    # -- waiting on the load ----------------------------------------------------------------------

    async def wait_progress(self, since: float | None = None, hosts: list[Host] | None = None,
                            timeout: float = 30.0) -> None:
        """Wait until every (given) host's load has a successful call, bid, name and join after ``since``."""
        since = since if since is not None else 0.0
        wanted = {(h.name, op) for h in (hosts or self.bed.hosts) for op in ("call", "bid", "name", "join")}

        def missing() -> set[tuple[str, str]]:
            done = {(r.host, r.op) for r in self.records() if r.ok and r.t0 >= since}
            return wanted - done

        await self._until(lambda: not missing(), timeout * self.slow, lambda: f"no success after the mark for "
                          f"{sorted(missing())}")

    async def wait_failed_calls_to(self, host: Host, since: float, timeout: float = 30.0) -> list[Record]:
        """Wait until calls from other hosts to ``host``'s counter have failed after ``since``; returns them."""
        def failed() -> list[Record]:
            return [r for r in self.records() if r.op == "call" and r.key == self.counter(host) and not r.ok
                    and r.host != host.name and r.t0 >= since]

        await self._until(lambda: bool(failed()), timeout * self.slow,
                          lambda: f"no call to {self.counter(host)} failed after the fault")
        return failed()

    async def _until(self, condition: Any, timeout: float, explain: Any) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail([f"waited {timeout:.0f}s: {explain()}"])
            await asyncio.sleep(0.05)

    # -- cluster state ----------------------------------------------------------------------------

    async def members_seen_by(self, observer: Host) -> set[str]:
        """The node ids ``observer``'s meshd lists as members."""
        from mabeam_client.mesh import MeshClient

        async with MeshClient(observer.endpoint("meshd"), timeout=2.0) as mesh:
            return {m.node_id for m in await mesh.members()}

    async def wait_member_state(self, host: Host, present: bool, observers: list[Host], timeout: float) -> float:
        """Wait until every observer lists (or no longer lists) ``host`` as a member; returns when."""
        async def done() -> bool:
            for observer in observers:
                try:
                    if (host.name in await self.members_seen_by(observer)) != present:
                        return False
                except Exception:  # noqa: BLE001 - an observer that does not answer is "not yet"
                    return False
            return True

        deadline = time.monotonic() + timeout * self.slow
        while not await done():
            if time.monotonic() > deadline:
                self.fail([f"{host.name} was {'not ' if present else ''}listed as a member by "
                           f"{[o.name for o in observers]} after {timeout * self.slow:.0f}s"])
            await asyncio.sleep(0.05)
        return self.bed.note(f"{host.name} {'back in' if present else 'gone from'} the membership views")

    async def wait_names(self, names: set[str], present: bool, observers: list[Host], timeout: float) -> float:
        """Wait until every observer's meshd lists (or no longer lists) every one of ``names``; returns when."""
        from mabeam_client.mesh import MeshClient

        async def done() -> bool:
            for observer in observers:
                try:
                    async with MeshClient(observer.endpoint("meshd"), timeout=2.0) as mesh:
                        listed = {e.name for e in await mesh.names()}
                except Exception:  # noqa: BLE001 - an observer that does not answer is "not yet"
                    return False
                if (names <= listed) if present else not (names & listed):
                    continue
                return False
            return True

        deadline = time.monotonic() + timeout * self.slow
        while not await done():
            if time.monotonic() > deadline:
                self.fail([f"names {sorted(names)} were {'not ' if present else 'still '}listed by "
                           f"{[o.name for o in observers]} after {timeout * self.slow:.0f}s"])
            await asyncio.sleep(0.05)
        return self.bed.note(f"names {sorted(names)} {'listed' if present else 'gone'} on "
                             f"{[o.name for o in observers]}")

    async def wait_coordinator_leader(self, other_than: Host | None, timeout: float) -> Host:
        """Wait until a coordinator other than ``other_than``'s leads (asked of the other hosts); returns it."""
        from mabeam_client.coordinator import CoordinatorClient

        endpoints = [h.endpoint("coordinator") for h in self.bed.hosts if h is not other_than]
        deadline = time.monotonic() + timeout * self.slow
        last = ""
        while True:
            try:
                async with CoordinatorClient(endpoints, timeout=2.0, failover_timeout=2.0) as coordinator:
                    leader = await coordinator.leader()
                if leader.leader_node_id and (other_than is None or leader.leader_node_id != other_than.name):
                    host = self.bed.host(leader.leader_node_id)
                    self.bed.note(f"coordinator leader: {host.name} (term {leader.term})")
                    return host
                last = f"leader is {leader.leader_node_id or 'nobody'}"
            except Exception as error:  # noqa: BLE001 - not yet
                last = repr(error)[:200]
            if time.monotonic() > deadline:
                self.fail([f"no coordinator other than {other_than.name if other_than else '-'} led within "
                           f"{timeout * self.slow:.0f}s ({last})"])
            await asyncio.sleep(0.1)

    async def coordinator_leader(self, timeout: float = 15.0) -> Host:
        """The host whose coordinator leads now (asked through the SDK; waits for one to lead)."""
        return await self.wait_coordinator_leader(None, timeout)

    async def registry_views(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """Names and group memberships (``group/node/agent``) as each node's meshd serves them."""
        from mabeam_client.mesh import MeshClient

        names: dict[str, set[str]] = {}
        groups: dict[str, set[str]] = {}
        for host in self.bed.hosts:
            async with MeshClient(host.endpoint("meshd"), timeout=2.0) as mesh:
                names[host.name] = {e.name for e in await mesh.names()}
                members: set[str] = set()
                for summary in await mesh.groups():
                    for m in await mesh.group_members(summary.group):
                        members.add(f"{summary.group}/{m.member.node_id}/{m.member.agent_id}")
                groups[host.name] = members
        return names, groups

    def expectations(self, until: float | None) -> tuple[Expectation, Expectation]:
        """What must (not) be in the registry, from the load's records and the agents the workload runs."""
        records = self.records()
        meshd = {h.name: h.daemons["meshd"].incarnations for h in self.bed.hosts}
        names = registry_expectation(records, "name", meshd, until)
        names.present |= self.expected_agent_names
        groups = registry_expectation(records, "join", meshd, until)
        return names, groups

    async def wait_registry_converged(self, since: float, exact: bool, until: float | None = None) -> float:
        """Wait until every node's names and groups meet the expectation, by ``since`` + TTL + 2 s.

        Returns how long after ``since`` it took. Expectations are recomputed on each poll (with
        ``until``, entries acknowledged later may still be missing). Fails with the violations seen last.
        """
        deadline = since + self.convergence_bound
        last: list[str] = []
        while True:
            try:
                names_view, groups_view = await self.registry_views()
                names, groups = self.expectations(until)
                last = registry_violations(names_view, names, exact, "name")
                loader_groups = {n: {m for m in v if not m.startswith(f"{GROUP}/")} for n, v in groups_view.items()}
                last += registry_violations(loader_groups, groups, exact, "group membership")
                last += self._member_agent_violations({n: v - loader_groups[n] for n, v in groups_view.items()},
                                                      exact)
            except Exception as error:  # noqa: BLE001 - a node that does not answer yet
                last = [f"registry not readable: {error!r}"]
            if not last:
                took = time.time() - since
                self.bed.note(f"registry converged {took:.2f}s after the mark")
                return took
            if time.time() > deadline:
                self.fail([f"names and groups did not converge within {self.convergence_bound:.1f}s "
                           f"(TTL {self.bed.lease_ttl} s + 2 s) of {since:.3f}:"] + last)
            await asyncio.sleep(0.05)

    def _member_agent_violations(self, views: dict[str, set[str]], exact: bool) -> list[str]:
        # Group GROUP holds one member agent per host; its agent id may change when agentd restarts it.
        problems = []
        for node, members in sorted(views.items()):
            for host in self.bed.hosts:
                mine = [m for m in members if m.startswith(f"{GROUP}/{host.name}/")]
                if not mine:
                    problems.append(f"{node} does not list {host.name}'s member agent in group {GROUP}")
                elif exact and len(mine) > 1:
                    problems.append(f"{node} lists {len(mine)} members of {host.name} in group {GROUP}: {mine}")
        if exact and len({frozenset(v) for v in views.values()}) > 1:
            problems.append(f"the nodes disagree on group {GROUP}: { {n: sorted(v) for n, v in views.items()} }")
        return problems

    async def wait_calls_work(self, since: float) -> float:
        """Wait until every host's relay reaches every counter (agent → agent, cross-host), by ``since`` + TTL + 2 s."""
        from mabeam_client.agents import AgentClient

        deadline = since + self.convergence_bound
        pending = {(a.name, b.name) for a in self.bed.hosts for b in self.bed.hosts}
        last: dict[tuple[str, str], str] = {}
        while pending:
            for caller, target in sorted(pending):
                host = self.bed.host(caller)
                try:
                    async with AgentClient(host.endpoint("agentd"), timeout=2.0) as agents:
                        await agents.call(f"relay-{caller}", {"to": f"ctr-{target}", "msg": "get", "timeout": 1.0},
                                          timeout=1.5)
                    pending.discard((caller, target))
                except Exception as error:  # noqa: BLE001 - not yet; reported at the deadline
                    last[(caller, target)] = repr(error)[:200]
            if pending and time.time() > deadline:
                self.fail([f"cross-host calls still failing {self.convergence_bound:.1f}s after {since:.3f}: "
                           f"{ {f'{c}->{t}': last.get((c, t)) for c, t in sorted(pending)} }"])
            if pending:
                await asyncio.sleep(0.05)
        took = time.time() - since
        self.bed.note(f"every agentd reaches every counter {took:.2f}s after the mark")
        return took

    async def check_healed(self, healed_at: float) -> dict[str, float]:
        """After a heal: the registry converged and every cross-host call works, both by TTL + 2 s."""
        registry = await self.wait_registry_converged(healed_at, exact=False, until=healed_at)
        calls = await self.wait_calls_work(healed_at)
        return {"registry_converged_s": registry, "calls_work_s": calls}

    # -- the end ----------------------------------------------------------------------------------

    def stop_load(self) -> None:
        """Stop every load generator (each finishes the operation it is in)."""
        for daemon in self.loads.values():
            daemon.terminate()
        deadline = time.monotonic() + 30.0 * self.slow
        for daemon in self.loads.values():
            daemon.wait_stopped(deadline)
        self.bed.note("load stopped")

    async def finish(self) -> None:
        """Stop the load, then check every invariant over everything recorded; raise with all violations."""
        self.stop_load()
        records = self.records()
        problems = failure_violations(records, slack=1.0 * self.slow)
        problems += counter_violations(records, await self.counter_values())
        problems += await self._bid_problems(records)
        problems += await self._fencing_problems()
        self.problems += problems
        if problems:
            self.fail(problems)
        await self.wait_registry_converged(self.bed.note("final registry check"), exact=True)

    async def counter_values(self) -> dict[str, int]:
        """Each counter's value, asked of its own agentd."""
        from mabeam_client.agents import AgentClient

        values = {}
        for host in self.bed.hosts:
            async with AgentClient(host.endpoint("agentd"), timeout=10.0) as agents:
                values[self.counter(host)] = int(await agents.call(self.counter(host), "get"))
        return values

    async def _etcd(self) -> EtcdClient:
        assert self.bed.etcd is not None
        running = [m.endpoint for m in self.bed.etcd.members if m.server.pid is not None]
        return EtcdClient(running, timeout=10.0)

    async def _bid_problems(self, records: list[Record]) -> list[str]:
        from coordinator import keys as ckeys

        client = await self._etcd()
        try:
            acks: dict[str, dict[str, int]] = {}
            logs: dict[str, list[int]] = {}
            for host in self.bed.hosts:
                auction = self.auction(host)
                prefix = ckeys.instance(self.bed.cluster, auction)
                kvs, _ = await client.get_prefix(prefix)
                acks[auction], logs[auction] = {}, []
                for kv in kvs:
                    rest = kv.key[len(prefix):].decode()
                    if rest.startswith("cid/"):
                        acks[auction][rest[4:]] = int(json.loads(kv.value)["seq"])
                    elif rest.startswith("ev/"):
                        logs[auction].append(int(rest[3:]))
        finally:
            await client.close()
        return bid_violations(records, acks, logs, {h.name: self.auction(h) for h in self.bed.hosts})

    async def etcd_history(self) -> list[HistoryEvent]:
        """Every change under the bed's cluster prefix since revision 1 (a sentinel key marks the end)."""
        from mabeam import keys

        root = keys.root(self.bed.cluster)
        client = await self._etcd()
        events: list[HistoryEvent] = []
        try:
            sentinel = root + SENTINEL.encode()
            end = await client.put(sentinel, b"")
            async for batch in client.watch_prefix(root, 1):
                for ev in batch.events:
                    events.append(HistoryEvent(ev.kv.mod_revision, ev.kind, ev.kv.key.decode(errors="replace"),
                                               ev.kv.value, (ev.prev.create_revision if ev.kind == "delete"
                                                             and ev.prev is not None else ev.kv.create_revision)))
                if any(ev.kv.key == sentinel and ev.kv.mod_revision >= end for ev in batch.events):
                    break
        except EtcdError as error:
            self.fail([f"cannot read the etcd history: {error}"])
        finally:
            await client.close()
        return events

    async def _fencing_problems(self) -> list[str]:
        from coordinator import keys as ckeys

        history = await self.etcd_history()
        return fencing_violations(history, ckeys.election(self.bed.cluster).decode(),
                                  ckeys.base(self.bed.cluster).decode())

    def fail(self, problems: list[str]) -> None:
        """Raise InvariantViolated with the problems, the load's latest failures and the bed's report."""
        start = self.bed.timeline[0][0] if self.bed.timeline else 0.0
        failures = [r for r in self.records() if not r.ok][-12:]
        lines = [f"  +{r.t0 - start:7.2f}s {r.host} {r.op} {r.key}: {r.code} {r.reason} {r.message[:120]!r} "
                 f"after {r.t1 - r.t0:.2f}s" for r in failures]
        raise InvariantViolated("\n".join(["invariants violated:", *(f"- {p}" for p in problems), "",
                                           "latest failed operations:", *lines, self.bed.report()]))

    def close(self) -> None:
        """Stop the load generators (safe to call twice, and after a failure)."""
        for daemon in self.loads.values():
            daemon.terminate()
        deadline = time.monotonic() + 10.0
        for daemon in self.loads.values():
            daemon.wait_stopped(deadline)
