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
from typing import TypeVar

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


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.02,
               what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value (returned); ConditionTimeout after ``slow(timeout)``.

    An exception from the predicate counts as "not yet" and is reported if the deadline passes.
    """
    limit = slow(timeout)
    deadline = time.monotonic() + limit
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - a failing probe is "not yet", reported at the deadline
            last_error = error
        if time.monotonic() >= deadline:
            raise _timed_out(what, limit, last_error)
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, *,
                           interval: float = 0.005, what: str = "condition") -> T:
    """The async form of :func:`wait_until`: ``predicate`` may be a plain or a coroutine function.

    The default interval is short because async conditions usually flip on another task's next turn.
    """
    limit = slow(timeout)
    deadline = time.monotonic() + limit
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
        except Exception as error:  # noqa: BLE001
            last_error = error
        if time.monotonic() >= deadline:
            raise _timed_out(what, limit, last_error)
        await asyncio.sleep(interval)
