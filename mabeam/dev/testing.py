"""Helpers for tests and benchmarks: wait on conditions with deadlines, find free ports.

Tests never sleep to synchronise; they poll a condition until a deadline and
fail with a message saying what did not happen.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class ConditionTimeout(AssertionError):
    """The condition did not hold before the deadline."""


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.02, what: str = "condition") -> T:
    """Poll `predicate` until it returns a truthy value (returned) or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - a failing probe is "not yet", reported at the deadline
            last_error = error
        if time.monotonic() >= deadline:
            raise ConditionTimeout(f"{what} did not hold within {timeout}s"
                                   + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


async def async_wait_until(predicate: Callable[[], Awaitable[T]], timeout: float, interval: float = 0.02,
                           what: str = "condition") -> T:
    """The async form of :func:`wait_until` (the predicate is a coroutine function)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = await predicate()
            if value:
                return value
        except Exception as error:  # noqa: BLE001
            last_error = error
        if time.monotonic() >= deadline:
            raise ConditionTimeout(f"{what} did not hold within {timeout}s"
                                   + (f" (last error: {last_error!r})" if last_error else ""))
        await asyncio.sleep(interval)


def free_port_block(size: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A base port B such that B..B+size-1 were all free a moment ago."""
    for _ in range(attempts):
        base = random.randrange(20000, 60000 - size)
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no block of {size} free ports found")
