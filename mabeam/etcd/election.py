"""Leader election per role, by the etcd recipe.

Each candidate puts a key ``<prefix><lease id>`` under its session lease; the
candidate whose key has the lowest create_revision leads. A follower watches
only its predecessor's key (no thundering herd) and re-checks when it goes.
A leader's term is its key's create_revision, which grows with every new
leader, and :meth:`Election.fence` gives the compare that keeps a deposed
leader from writing: put it in every write's transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aetcd import rpc

from mabeam.etcd.client import EtcdClient, KeyValue, cmp_create_revision, op_get, op_put
from mabeam.etcd.session import Session

log = logging.getLogger(__name__)


def leader_of(candidates: Iterable[KeyValue]) -> KeyValue | None:
    """The leading candidate: the lowest create_revision (the pure rule, shared with observers)."""
    return min(candidates, key=lambda kv: kv.create_revision, default=None)


class ElectionLost(Exception):
    """The candidacy key vanished (its lease was lost) while campaigning or leading."""


class Election:
    """One candidacy for one role, tied to a session's lease.

    ``prefix`` is the role's key prefix (see ``mabeam.keys.election``); ``value``
    is what observers read about the leader (a serialized LeaderInfo).
    """

    def __init__(self, client: EtcdClient, session: Session, prefix: bytes, value: bytes) -> None:
        self.client = client
        self.session = session
        self.prefix = prefix
        self.value = value
        self.key = prefix + f"{session.lease_id:016x}".encode()
        self.term = 0
        self._leading = False

    @property
    def is_leader(self) -> bool:
        """True while this candidate leads and its lease is not (locally) expired."""
        return self._leading and not self.session.expired_locally

    def fence(self) -> rpc.Compare:
        """A transaction compare that holds only while this candidate's term is current."""
        return cmp_create_revision(self.key, self.term)

    async def campaign(self) -> int:
        """Wait until this candidate leads; returns its term. Raises ElectionLost if the key vanishes."""
        result = await self.client.txn(
            [cmp_create_revision(self.key, 0)],
            [op_put(self.key, self.value, self.session.lease_id)],
            [op_get(self.key)],
        )
        self.term = result.revision if result.succeeded else result.ranges[0][0].create_revision
        while True:
            candidates, revision = await self.client.get_prefix(self.prefix)
            if not any(kv.key == self.key for kv in candidates):
                raise ElectionLost(f"candidacy {self.key!r} vanished (lease lost)")
            predecessors = [kv for kv in candidates if kv.create_revision < self.term]
            if not predecessors:
                self._leading = True
                log.info("leading %s with term %d", self.prefix.decode(), self.term)
                return self.term
            predecessor = max(predecessors, key=lambda kv: kv.create_revision)
            await self._wait_deleted(predecessor.key, revision + 1)

    async def _wait_deleted(self, key: bytes, start_revision: int) -> None:
        async for batch in self.client.watch_prefix(key, start_revision):
            if any(ev.kind == "delete" and ev.kv.key == key for ev in batch.events):
                return

    async def resign(self) -> None:
        """Give up the role (or the candidacy): the next candidate takes over at once."""
        self._leading = False
        await self.client.delete(self.key)
