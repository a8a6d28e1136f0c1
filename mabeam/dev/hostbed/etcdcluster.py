"""A multi-member etcd cluster spread over the bed's hosts, with the faults the scenarios need.

Each member is an :class:`~mabeam.etcd.embedded.EmbeddedEtcd` run in its
host's namespace on the host's address (client 2379, peer 2380), all with one
``--initial-cluster`` and a per-run cluster token. Members are killed with -9
and restarted on the same data, as a crashed etcd host would be.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mabeam.dev.hostbed.launch import PORTS
from mabeam.dev.hostbed.netns import HostNet
from mabeam.etcd.embedded import EmbeddedEtcd, EtcdStartError


@dataclass
class Member:
    """One etcd member and the host it runs on."""

    name: str
    host: HostNet
    server: EmbeddedEtcd

    @property
    def endpoint(self) -> str:
        """``address:port`` of its client API."""
        return self.server.endpoint


class EtcdCluster:
    """``size`` members, member k on host ``k`` (wrapping around when there are fewer hosts)."""

    def __init__(self, hosts: list[HostNet], size: int, directory: Path, token: str) -> None:
        if size < 1:
            raise ValueError("at least one etcd member")
        chosen = [hosts[k % len(hosts)] for k in range(size)]
        if len({h.name for h in chosen}) < size:
            raise ValueError("one etcd member per host at most (give the bed as many hosts as members)")
        initial = ",".join(f"etcd-{h.index}=http://{h.address}:{PORTS['etcd_peer']}" for h in chosen)
        self.members = [
            Member(f"etcd-{h.index}", h, EmbeddedEtcd(
                data_dir=directory / f"etcd-{h.index}", host=h.address, client_port=PORTS["etcd_client"],
                peer_port=PORTS["etcd_peer"], name=f"etcd-{h.index}", initial_cluster=initial,
                cluster_token=token, command_prefix=h.exec_prefix()))
            for h in chosen
        ]

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every member's client endpoint, in member order (what daemons are configured with)."""
        return tuple(m.endpoint for m in self.members)

    def start(self, timeout: float = 60.0) -> None:
        """Start every member, then wait until each is healthy (a quorum must run before any is)."""
        for member in self.members:
            member.server.start(wait=False)
        deadline = time.monotonic() + timeout
        for member in self.members:
            member.server.wait_healthy(max(1.0, deadline - time.monotonic()))

    def member(self, name_or_index: str | int) -> Member:
        """A member by name (``etcd-2``) or 0-based position."""
        if isinstance(name_or_index, int):
            return self.members[name_or_index]
        return next(m for m in self.members if m.name == name_or_index)

    def status(self, member: Member) -> dict[str, str] | None:
        """The member's maintenance status (member_id, leader, raft term...), None when it does not answer."""
        request = urllib.request.Request(f"http://{member.endpoint}/v3/maintenance/status", data=b"{}",
                                         method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:
                body = json.loads(response.read())
        except (urllib.error.URLError, OSError, TimeoutError, ValueError):
            return None
        return {"member_id": str(body.get("header", {}).get("member_id", "")), "leader": str(body.get("leader", "")),
                "raft_term": str(body.get("raftTerm", ""))}

    def leader(self, timeout: float = 15.0) -> Member:
        """The member that currently leads, as the running members agree; waits up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            ids: dict[str, Member] = {}
            leaders: set[str] = set()
            for member in self.members:
                if member.server.pid is None:
                    continue
                status = self.status(member)
                if status is not None:
                    ids[status["member_id"]] = member
                    if status["leader"] and status["leader"] != "0":
                        leaders.add(status["leader"])
            if len(leaders) == 1 and (leader := next(iter(leaders))) in ids:
                return ids[leader]
            if time.monotonic() > deadline:
                raise EtcdStartError(f"the etcd members do not agree on a running leader: {leaders}")
            time.sleep(0.05)

    def followers(self) -> list[Member]:
        """Running members that do not lead."""
        leader = self.leader()
        return [m for m in self.members if m is not leader and m.server.pid is not None]

    def kill(self, member: Member) -> None:
        """kill -9 one member; its data stays for :meth:`restart`."""
        member.server.kill()

    def restart(self, member: Member, timeout: float = 30.0) -> None:
        """Start a member again on its data and wait until it is healthy (it rejoins the cluster)."""
        member.server.start(timeout=timeout)

    def close(self) -> None:
        """kill -9 every member (a SIGTERM'd leader spends seconds handing leadership to members that are
        stopping too) and delete their data."""
        for member in self.members:
            if member.server.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member.server.pid, signal.SIGKILL)
        for member in self.members:
            member.server.close()
