"""Retries as a pure policy: exponential backoff with full jitter, honouring ``Retry-After``.

:func:`next_delay` answers "after this failed attempt, wait how long, or give up?"
from the attempt count, the error's kind, the provider's Retry-After, the time
left before the call's total deadline and a uniform random number the caller
draws (so tests pass a fixed one). Only retryable kinds are retried (429, 5xx,
connection errors, timeouts, malformed answers, a stream cut before anything was
emitted); never 400/401/404.

Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): the wait
is uniform in ``[0, min(cap, base * 2**(attempt-1))]``, which spreads a herd of
clients better than equal or decorrelated jitter. A Retry-After is a floor on
the wait; one longer than ``max_retry_after_s`` gives up at once so that the
router can fall back to another model instead of sleeping.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass

from agentd.models.types import RETRYABLE, ErrorKind


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Retry knobs (defaults are documented in docs/models.md)."""

    max_attempts: int = 3
    base_s: float = 0.2
    cap_s: float = 5.0
    max_retry_after_s: float = 30.0
    attempt_timeout_s: float = 60.0
    total_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_s < 0 or self.cap_s < 0:
            raise ValueError("max_attempts >= 1, base_s >= 0 and cap_s >= 0 are required")
        if self.attempt_timeout_s <= 0 or self.total_timeout_s <= 0:
            raise ValueError("attempt_timeout_s and total_timeout_s must be > 0")


def backoff(config: RetryConfig, attempt: int, unit: float) -> float:
    """Full-jitter backoff after the `attempt`-th failure (1-based); `unit` is uniform in [0, 1)."""
    ceiling = min(config.cap_s, config.base_s * (2.0 ** min(attempt - 1, 62)))
    return max(0.0, min(1.0, unit)) * ceiling


def next_delay(config: RetryConfig, attempt: int, kind: ErrorKind, retry_after_s: float | None,
               remaining_s: float, unit: float) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or None to give up.

    Gives up when the kind is not retryable, the attempts are spent, the provider
    asks to wait longer than ``max_retry_after_s``, or the wait would not leave
    any time before the total deadline.
    """
    if kind not in RETRYABLE or attempt >= config.max_attempts:
        return None
    delay = backoff(config, attempt, unit)
    if retry_after_s is not None:
        if retry_after_s > config.max_retry_after_s:
            return None
        delay = max(delay, retry_after_s)
    if delay >= remaining_s:
        return None
    return delay


def parse_retry_after(value: str | None, now_epoch_s: float, value_ms: str | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date) or ``retry-after-ms``.

    Returns None when absent or unparsable; never negative.
    """
    if value_ms:
        try:
            return max(0.0, float(value_ms) / 1000.0)
        except ValueError:
            pass
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now_epoch_s)


def attempt_timeout(config: RetryConfig, remaining_s: float) -> float:
    """The timeout of the next attempt: the per-attempt limit, cut to what is left of the total."""
    return max(0.0, min(config.attempt_timeout_s, remaining_s))


__all__ = ["RetryConfig", "backoff", "next_delay", "parse_retry_after", "attempt_timeout", "ErrorKind"]
