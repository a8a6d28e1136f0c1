"""Helpers for tests and benchmarks: the one ``wait_until`` (sync and async) and the slow-machine factor.

Tests never sleep to synchronise; they poll a condition until a deadline and
fail with a message saying what did not happen. Deadlines are scaled by
``MABEAM_TEST_SLOWDOWN`` (a float, default 1): on a slow or heavily loaded
machine set it to 2 or 3 and every wait (and every wall-clock limit a test
computes with :func:`slow`) stretches with it, rather than the suite turning
flaky.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def slowdown() -> float:
    """The slow-machine factor from ``MABEAM_TEST_SLOWDOWN`` (at least 1)."""
    try:
        return max(1.0, float(os.environ.get("MABEAM_TEST_SLOWDOWN", "1")))
    except ValueError:
        return 1.0


def slow(seconds: float) -> float:
    """A wall-clock limit for this machine: ``seconds`` times the slow-machine factor."""
    return seconds * slowdown()


class ConditionTimeout(AssertionError, TimeoutError):
    """The condition did not hold before the deadline (an AssertionError, so pytest shows it as a failure)."""


def _timed_out(what: str, timeout: float, last_error: BaseException | None) -> ConditionTimeout:
    return ConditionTimeout(f"{what} did not hold within {timeout:g}s"
                            + (f" (last error: {last_error!r})" if last_error else ""))


class _Wait(Generic[T]):
    """One wait's deadline, the value that ended it, and the last error its probe raised."""

    def __init__(self, timeout: float, what: str) -> None:
        self.limit = slow(timeout)
        self.deadline = time.monotonic() + self.limit
        self.what = what
        self.value: T | None = None
        self.last_error: Exception | None = None

    def done(self, value: T | None, error: Exception | None) -> bool:
        """Whether ``value`` ends the wait (it is truthy); ConditionTimeout once the deadline passed without."""
        if value:
            self.value = value
            return True
        self.last_error = error or self.last_error
        if time.monotonic() >= self.deadline:
            raise _timed_out(self.what, self.limit, self.last_error)
        return False


def _probe(predicate: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return predicate(), None
    except Exception as error:  # noqa: BLE001 - a failing probe is "not yet", reported at the deadline
        return None, error


async def _async_probe(predicate: Callable[[], T | Awaitable[T]]) -> tuple[T | None, Exception | None]:
    try:
        value = predicate()
        return (await value if inspect.isawaitable(value) else value), None
    except Exception as error:  # noqa: BLE001 - a failing probe is "not yet", reported at the deadline
        return None, error


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.02,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value (returned); ConditionTimeout after ``slow(timeout)``.

    An exception from the predicate counts as "not yet" and is reported if the deadline passes.
    """
    wait: _Wait[T] = _Wait(timeout, what)
    while not wait.done(*_probe(predicate)):
        time.sleep(interval)
    return wait.value  # type: ignore[return-value]  # truthy, so set


async def async_wait_until(predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, *,
                           interval: float = 0.005, what: str = "condition") -> T:
    """The async form of :func:`wait_until`: ``predicate`` may be a plain or a coroutine function.

    The default interval is short because async conditions usually flip on another task's next turn.
    """
    wait: _Wait[T] = _Wait(timeout, what)
    while not wait.done(*await _async_probe(predicate)):  # noqa: ASYNC110 - polling is what this helper is for
        await asyncio.sleep(interval)
    return wait.value  # type: ignore[return-value]  # truthy, so set
