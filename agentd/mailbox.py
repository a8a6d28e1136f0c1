"""A bounded mailbox: user messages up to a capacity, system messages always, ``statistics()`` snapshots.

A full mailbox raises :class:`~agentd.errors.MailboxFull` at the sender (RESOURCE_EXHAUSTED);
nothing is dropped silently. System messages (shutdown, child exits, code change)
bypass the bound and are delivered before user messages, as OTP delivers system
messages to a process even when it is busy.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from agentd.errors import MailboxFull


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """An immutable snapshot of one mailbox."""

    depth: int
    capacity: int
    system_depth: int
    received_total: int
    rejected_total: int
    high_water: int


class Mailbox:
    """One agent's queue: bounded for user messages, unbounded for system messages; one consumer."""

    __slots__ = ("capacity", "_items", "_system", "_waiter", "_received", "_rejected", "_high_water", "owner")

    def __init__(self, capacity: int, owner: str = "") -> None:
        if capacity < 1:
            raise ValueError("mailbox capacity must be >= 1")
        self.capacity = capacity
        self.owner = owner
        self._items: deque[Any] = deque()
        self._system: deque[Any] | None = None  # created on first use: most agents never get one
        self._waiter: asyncio.Future[None] | None = None
        self._received = 0
        self._rejected = 0
        self._high_water = 0

    def put_nowait(self, item: Any) -> None:
        """Enqueue a user message or raise MailboxFull when the mailbox is at capacity."""
        items = self._items
        depth = len(items)
        if depth >= self.capacity:
            self._rejected += 1
            raise MailboxFull(f"mailbox of {self.owner or 'agent'} is full ({self.capacity} messages)")
        items.append(item)
        self._received += 1
        if depth >= self._high_water:
            self._high_water = depth + 1
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def put_system(self, item: Any) -> None:
        """Enqueue a system message; never refused, delivered before user messages."""
        if self._system is None:
            self._system = deque()
        self._system.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def get_nowait(self) -> Any | None:
        """The next message (system first), or None when empty."""
        if self._system:
            return self._system.popleft()
        if self._items:
            return self._items.popleft()
        return None

    async def get(self) -> Any:
        """Wait for the next message (system first)."""
        while True:
            if self._system:
                return self._system.popleft()
            if self._items:
                return self._items.popleft()
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def drain(self) -> list[Any]:
        """Remove and return every queued message (used when the owner exits, to fail pending calls)."""
        items = list(self._system or ()) + list(self._items)
        self._items.clear()
        if self._system:
            self._system.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)

    def statistics(self) -> MailboxStatistics:
        """A snapshot: depth, capacity, system depth, totals received and rejected, the high-water mark."""
        return MailboxStatistics(depth=len(self._items), capacity=self.capacity,
                                 system_depth=len(self._system or ()), received_total=self._received,
                                 rejected_total=self._rejected, high_water=self._high_water)
