"""One executor per run: the run's etcd key under a lease of its own, renewed while the executor works.

:meth:`RunLease.acquire` grants a lease (a :class:`~mabeam.etcd.session.Session`)
and puts ``runs/executors/<run_id>`` under it only if the key does not exist — so
a second executor is refused (``holder`` says who has it), and a key whose lease
expired (its executor died) may be taken over. The key's create revision is the
executor's **fencing token**, the same idea as an election's term
(:meth:`mabeam.etcd.election.Election.fence`): it grows with every new holder, the
executor registers it in the runs store when it claims the run, and every later
append is conditioned on it there, so a deposed executor cannot append.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from mabeam import keys
from mabeam.etcd.client import EtcdClient, EtcdError, cmp_create_revision, op_get, op_put
from mabeam.etcd.session import Session


class RunLease:
    """A run's executor key and its lease (see the module docstring)."""

    def __init__(self, client: EtcdClient, cluster: str, run_id: str, node_id: str, agent_type: str,
                 ttl: int) -> None:
        self.client = client
        self.key = keys.run_executor(cluster, run_id)
        self.run_id = run_id
        self.node_id = node_id
        self.agent_type = agent_type
        self.ttl = ttl
        self.session: Session | None = None
        #: The fencing token: the executor key's create revision (0 until acquired).
        self.token = 0
        #: Who holds the run when :meth:`acquire` was refused (the key's value).
        self.holder: dict[str, Any] = {}

    @property
    def lease_id(self) -> int:
        """The etcd lease under which the key lives."""
        return self.session.lease_id if self.session is not None else 0

    @property
    def lost(self) -> bool:
        """True once the lease is gone or no renewal succeeded for a whole TTL."""
        return self.session is None or self.session.expired_locally

    async def acquire(self) -> bool:
        """Take the run if nobody holds it; False (``holder`` filled in) when another executor does."""
        session = await Session.open(self.client, self.ttl)
        value = json.dumps({"node_id": self.node_id, "agent_type": self.agent_type,
                            "lease_id": session.lease_id}).encode()
        try:
            result = await self.client.txn([cmp_create_revision(self.key, 0)],
                                           [op_put(self.key, value, session.lease_id)], [op_get(self.key)])
        except BaseException:
            await session.close()
            raise
        if not result.succeeded:
            await session.close()
            found = result.ranges[0][0] if result.ranges and result.ranges[0] else None
            with contextlib.suppress(ValueError):
                self.holder = json.loads(found.value) if found is not None else {}
            if found is not None:
                self.holder["fencing_token"] = found.create_revision
            return False
        self.session = session
        self.token = result.revision
        return True

    async def keepalive(self) -> None:
        """Renew the lease until it is lost (returns then) or released."""
        if self.session is not None:
            await self.session.keepalive()

    async def wait_lost(self, check_every: float = 0.25) -> None:
        """Return once the lease is lost or has not been renewed for a whole TTL."""
        while not self.lost:
            session = self.session
            assert session is not None
            try:
                async with asyncio.timeout(check_every):
                    await session.lost.wait()
            except TimeoutError:
                pass

    async def release(self) -> None:
        """Revoke the lease: the key vanishes now (the janitor can hand the run to another executor)."""
        if self.session is not None:
            with contextlib.suppress(EtcdError):
                await self.session.close(revoke=True)


async def holder_of(client: EtcdClient, cluster: str, run_id: str) -> dict[str, Any] | None:
    """The live executor of a run as its key says ({node_id, agent_type, lease_id, fencing_token}), or None."""
    found = await client.get(keys.run_executor(cluster, run_id))
    if found is None:
        return None
    try:
        value: dict[str, Any] = json.loads(found.value)
    except ValueError:
        value = {}
    value["fencing_token"] = found.create_revision
    return value
