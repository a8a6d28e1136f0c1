"""A circuit breaker per provider endpoint, as a pure state machine (time is passed in).

closed → open after ``failure_threshold`` failures within ``window_s`` (successes
do not erase failures inside the window; a success in closed state only lets old
failures age out) → after ``open_s`` the next caller is admitted as the one
half-open probe (every other caller is refused while it runs) → the probe's
success closes the breaker, its failure opens it again for another ``open_s``.

The caller asks :meth:`CircuitBreaker.allow` before an attempt and reports the
outcome with :meth:`record_success` / :meth:`record_failure`; a probe that ends
without an outcome (cancelled) is given back with :meth:`release_probe`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    """The breaker's state, as /metrics and events show it."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Breaker knobs: failures within a window that open it, and how long it stays open."""

    failure_threshold: int = 5
    window_s: float = 30.0
    open_s: float = 10.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.window_s <= 0 or self.open_s <= 0:
            raise ValueError("failure_threshold >= 1, window_s > 0 and open_s > 0 are required")


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change, for events and logs."""

    before: BreakerState
    after: BreakerState
    at: float


class CircuitBreaker:
    """One endpoint's breaker. Not thread-safe; one event loop owns it."""

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self.state = BreakerState.CLOSED
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self._probe_out = False
        self.transitions: list[Transition] = []
        self.probes = 0

    def _move(self, state: BreakerState, now: float) -> None:
        if state != self.state:
            self.transitions.append(Transition(self.state, state, now))
            self.state = state

    def _prune(self, now: float) -> None:
        horizon = now - self.config.window_s
        while self._failures and self._failures[0] <= horizon:
            self._failures.popleft()

    def retry_after(self, now: float) -> float:
        """Seconds until an open breaker admits a probe (0 when it would admit now or is closed)."""
        if self.state != BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.config.open_s - now)

    def allow(self, now: float) -> bool:
        """Whether an attempt may go out now; in half-open state only one probe at a time does."""
        if self.state == BreakerState.CLOSED:
            return True
        if self.state == BreakerState.OPEN:
            if now < self._opened_at + self.config.open_s:
                return False
            self._move(BreakerState.HALF_OPEN, now)
        if self._probe_out:
            return False
        self._probe_out = True
        self.probes += 1
        return True

    def record_success(self, now: float) -> None:
        """An attempt succeeded (or failed in a way that is not the endpoint's fault)."""
        if self.state == BreakerState.HALF_OPEN:
            self._probe_out = False
            self._failures.clear()
            self._move(BreakerState.CLOSED, now)
        else:
            self._prune(now)

    def record_failure(self, now: float) -> None:
        """An attempt failed in a way that counts against the endpoint (5xx, timeout, malformed, cut)."""
        if self.state == BreakerState.HALF_OPEN:
            self._probe_out = False
            self._opened_at = now
            self._move(BreakerState.OPEN, now)
            return
        if self.state == BreakerState.OPEN:
            return  # a straggler that left before the breaker opened
        self._failures.append(now)
        self._prune(now)
        if len(self._failures) >= self.config.failure_threshold:
            self._failures.clear()
            self._opened_at = now
            self._move(BreakerState.OPEN, now)

    def release_probe(self) -> None:
        """A half-open probe ended without an outcome (cancelled): let the next caller probe."""
        self._probe_out = False

    @property
    def recent_failures(self) -> int:
        """Failures currently counted in the window (closed state)."""
        return len(self._failures)
