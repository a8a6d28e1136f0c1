"""A cancelled keepalive loop ends, whenever the cancel comes: also in the turn its read completes.

Python 3.11's ``asyncio.wait_for`` returned the read's result and dropped a cancel that came in that
turn; the keepalive then renewed its lease forever and meshd hung on SIGTERM (6 of 40 stops right
after start, until systemd's SIGKILL). A fake stream answers at once, and the cancel is tried at
every loop turn of the first rounds, so one lands in that turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mabeam.etcd.session import Session


class _Answer:
    TTL = 3


class _Stream:
    async def write(self, request: Any) -> None:
        return None

    async def read(self) -> Any:
        return _Answer()

    def cancel(self) -> None:
        return None


class _Client:
    def keepalive_stream(self) -> _Stream:
        return _Stream()

    def failover(self, why: str) -> None:
        raise AssertionError(why)


@pytest.mark.parametrize("turns", range(12))
async def test_a_cancelled_keepalive_ends(turns: int) -> None:
    session = Session(_Client(), lease_id=1, ttl=1)  # type: ignore[arg-type]
    session.ttl = 0  # no sleep between renewals: every turn is a read
    task = asyncio.get_running_loop().create_task(session.keepalive())
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    if not done:
        session._closed = True  # end it, so that the failure below is reported rather than hanging the loop
        await asyncio.wait({task}, timeout=2.0)
        pytest.fail(f"the keepalive loop went on after a cancel at turn {turns}")
    assert task.cancelled()
