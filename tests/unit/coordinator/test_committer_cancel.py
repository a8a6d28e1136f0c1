"""A committer cancelled while its transaction is in flight (the term ended under it) fails that batch's
bids, so every SubmitBids stream waiting on them ends with NOT_DURABLE and the client resends them to the
new leader (a pure test: the etcd client is a stub whose transaction never returns)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coordinator.store import CommitFailed, Committer
from mabeam.etcd.client import cmp_create_revision


class _SilentEtcd:
    """etcd cut off: a transaction is sent and never answered."""

    def __init__(self) -> None:
        self.sent = asyncio.Event()

    async def txn(self, compare: Any, success: Any = (), failure: Any = ()) -> Any:
        self.sent.set()
        await asyncio.Event().wait()


async def test_cancelling_the_committer_fails_the_batch_in_flight() -> None:
    # Found on the netns test bed: the active coordinator's host was cut off, its term ended while a commit
    # was in flight, and the bids of that commit were never answered: the bid streams waiting on them hung
    # for good, long after the heal.
    etcd = _SilentEtcd()
    committer = Committer(etcd, cmp_create_revision(b"/election/x", 5))  # type: ignore[arg-type]
    runner = asyncio.create_task(committer.run())
    in_flight = committer.stage({b"/k1": b"v1"})
    await etcd.sent.wait()
    queued = committer.stage({b"/k2": b"v2"})
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    committer.close()
    for future in (in_flight, queued):
        assert future.done() and isinstance(future.exception(), CommitFailed)
