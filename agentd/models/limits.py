"""Token buckets (rate limits) and the bulkhead's admission table: pure, time passed in.

Rate limits: one bucket per (provider or tenant, requests or tokens); a bucket of
``capacity`` refills at ``rate`` per second. :meth:`TokenBucket.take` either
takes now (returns 0.0) or says how long until it could (and takes nothing), so
the caller refuses with RESOURCE_EXHAUSTED/RATE_LIMITED and a RetryInfo.

Bulkhead: at most ``max_concurrent`` calls in flight per provider, at most
``max_queued`` more waiting; beyond that a call is refused at once with
BULKHEAD_FULL. :class:`BulkheadTable` only counts; the asyncio shell
(:mod:`agentd.models.router`) parks waiters on futures in FIFO order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class TokenBucket:
    """A token bucket: ``capacity`` tokens, refilled continuously at ``rate`` per second."""

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        if capacity <= 0 or rate <= 0:
            raise ValueError("capacity and rate must be > 0")
        self.capacity = float(capacity)
        self.rate = float(rate)
        self.tokens = float(capacity)
        self.updated = now

    @classmethod
    def per_minute(cls, limit: float, now: float) -> TokenBucket:
        """A bucket allowing `limit` per minute, with a burst of `limit`."""
        return cls(limit, limit / 60.0, now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, amount: float, now: float) -> float:
        """Take `amount` tokens now and return 0.0, or take nothing and return the seconds until possible.

        An amount above the capacity can never be taken whole; it is capped at
        the capacity so a single large request is slowed, not refused forever.
        """
        self._refill(now)
        amount = min(float(amount), self.capacity)
        if self.tokens >= amount:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self.rate

    def give_back(self, amount: float, now: float) -> None:
        """Return tokens taken for a call that never went out."""
        self._refill(now)
        self.tokens = min(self.capacity, self.tokens + amount)

    def available(self, now: float) -> float:
        """Tokens available now."""
        self._refill(now)
        return self.tokens


class Admission(StrEnum):
    """The bulkhead's answer to a new call."""

    RUN = "run"
    QUEUE = "queue"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class BulkheadConfig:
    """At most ``max_concurrent`` in flight and ``max_queued`` waiting per provider."""

    max_concurrent: int = 32
    max_queued: int = 256

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.max_queued < 0:
            raise ValueError("max_concurrent >= 1 and max_queued >= 0 are required")


class BulkheadTable:
    """Counts in-flight and queued calls of one provider; FIFO queue of waiter tokens."""

    def __init__(self, config: BulkheadConfig | None = None) -> None:
        self.config = config or BulkheadConfig()
        self.in_flight = 0
        self.queue: deque[int] = deque()
        self.refused = 0
        self._serial = 0

    def admit(self) -> tuple[Admission, int]:
        """A new call: RUN (counted in flight), QUEUE (with its waiter token) or REFUSE."""
        if self.in_flight < self.config.max_concurrent and not self.queue:
            self.in_flight += 1
            return Admission.RUN, 0
        if len(self.queue) < self.config.max_queued:
            self._serial += 1
            self.queue.append(self._serial)
            return Admission.QUEUE, self._serial
        self.refused += 1
        return Admission.REFUSE, 0

    def release(self) -> int | None:
        """A running call finished; returns the waiter token to wake (it now counts in flight), if any."""
        if self.queue:
            return self.queue.popleft()  # the slot passes straight to the next waiter
        self.in_flight = max(0, self.in_flight - 1)
        return None

    def abandon(self, token: int) -> bool:
        """A queued waiter gave up (cancelled, deadline); False if it was already woken (then it must release)."""
        try:
            self.queue.remove(token)
        except ValueError:
            return False
        return True
