"""The coordinator's etcd boundary: fenced, batched commits and state loading.

:class:`Committer` owns the only write path. Callers stage atomic write
groups (see :mod:`coordinator.batching`) and await their durability; one
transaction is in flight at a time, and everything staged while it was in
flight goes into the next one (group commit), so a burst of concurrent bids
costs a handful of etcd transactions. Every transaction carries the leader's
fence compare: once another coordinator has taken over, no write of this one
can land.

A failed transaction leaves the in-memory state ahead of etcd (or unsure, if
etcd timed out after committing), so the committer *breaks*: it fails the
batch and everything queued behind it, refuses new work, and sets
``broken``; the owner then drops its state and reloads it from etcd.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aetcd import rpc

from coordinator.batching import MAX_TXN_OPS, WriteGroup, take_fitting
from mabeam.etcd.client import EtcdClient, EtcdError, KeyValue, op_delete, op_put

log = logging.getLogger(__name__)


#: Keys per page when loading: one unpaged range of a large state exceeds gRPC's 4 MiB receive limit.
LOAD_PAGE = 2000


async def read_prefix(client: EtcdClient, prefix: bytes, page: int = LOAD_PAGE) -> tuple[list[KeyValue], int]:
    """Every key under ``prefix`` as one consistent snapshot (paged by ``EtcdClient.get_prefix``)."""
    return await client.get_prefix(prefix, page)


class CommitFailed(Exception):
    """The write was not (or not surely) made durable; the leader must reload or step down."""


class Fenced(CommitFailed):
    """The fence compare failed: another coordinator leads now."""


@dataclass
class CommitStats:
    """Counters for metrics and the bench."""

    transactions: int = 0
    groups: int = 0
    operations: int = 0
    seconds: float = 0.0
    largest_batch: int = 0
    failures: int = 0


@dataclass
class _Pending:
    group: WriteGroup
    done: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Committer:
    """Group-commits write groups to etcd behind a fence; run :meth:`run` in the owner's TaskGroup."""

    def __init__(self, client: EtcdClient, fence: rpc.Compare, max_ops: int = MAX_TXN_OPS, *,
                 on_commit: Callable[[int, float], None] | None = None,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.client = client
        self.fence = fence
        self.max_ops = max_ops
        #: Told (groups, seconds) per committed transaction, and once when a transaction fails (metrics).
        self.on_commit = on_commit
        self.on_failure = on_failure
        self.stats = CommitStats()
        self.broken = asyncio.Event()
        self.reason = ""
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()

    def stage(self, group: WriteGroup) -> asyncio.Future[int]:
        """Queue one atomic group; the future resolves to its commit revision or raises CommitFailed."""
        pending = _Pending(group)
        if self.broken.is_set():
            pending.done.set_exception(CommitFailed(self.reason))
            pending.done.exception()  # mark retrieved: nobody may be waiting
            return pending.done
        if len(group) > self.max_ops:
            # The caller's memory already holds the change: breaking makes the node reload from etcd.
            self._break([pending], CommitFailed(f"write group of {len(group)} keys exceeds {self.max_ops}"))
            return pending.done
        self._queue.append(pending)
        self._wake.set()
        return pending.done

    async def commit(self, group: WriteGroup) -> int:
        """Stage one group and wait until it is durable."""
        return await self.stage(group)

    async def run(self) -> None:
        """Commit staged groups until broken (then returns) or cancelled."""
        while not self.broken.is_set():
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            count = take_fitting([p.group for p in self._queue], self.max_ops)
            batch, self._queue = self._queue[:count], self._queue[count:]
            writes: dict[bytes, bytes | None] = {}
            for pending in batch:
                writes.update(pending.group)
            ops = [op_delete(k) if v is None else op_put(k, v) for k, v in writes.items()]
            started = time.perf_counter()
            try:
                result = await self.client.txn([self.fence], ops, [])
            except EtcdError as error:
                self._break(batch, CommitFailed(f"etcd write failed: {error}"))
                return
            except asyncio.CancelledError:
                # The term ended under this commit (lease lost, stopping): its outcome is unknown, so its
                # requests are failed NOT_DURABLE and clients resend them, same ids, to the next leader.
                # Left unresolved, every bid stream waiting on them hung for good (the netns test bed).
                self._break(batch, CommitFailed("the term ended while this commit was in flight"))
                raise
            elapsed = time.perf_counter() - started
            self.stats.seconds += elapsed
            if not result.succeeded:
                self._break(batch, Fenced("this coordinator was deposed: the fence compare failed"))
                return
            self.stats.transactions += 1
            self.stats.groups += len(batch)
            self.stats.operations += len(ops)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            if self.on_commit is not None:
                self.on_commit(len(batch), elapsed)
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_result(result.revision)

    def _break(self, batch: list[_Pending], error: CommitFailed) -> None:
        log.warning("commit failed, coordinator state must be reloaded: %s", error)
        self.stats.failures += 1
        if self.on_failure is not None and batch:
            self.on_failure()
        self.reason = str(error)
        for pending in [*batch, *self._queue]:
            if not pending.done.done():
                pending.done.set_exception(type(error)(str(error)))
                pending.done.exception()
        self._queue = []
        self.broken.set()

    def close(self, reason: str = "coordinator stopping") -> None:
        """Fail everything still queued (the owner is shutting down or stepping down)."""
        if not self.broken.is_set():
            self._break([], CommitFailed(reason))
