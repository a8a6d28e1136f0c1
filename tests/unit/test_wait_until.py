"""The one wait_until (sync and async): the value that ended the wait, and what a timeout reports."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from mabeam.dev.testing import ConditionTimeout, async_wait_until, wait_until


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = itertools.count()
    assert wait_until(lambda: next(calls) >= 3 and "held", interval=0) == "held"


def test_wait_until_reports_what_and_the_last_error_at_the_deadline() -> None:
    with pytest.raises(ConditionTimeout, match=r"the probe did not hold .*ZeroDivisionError"):
        wait_until(lambda: 1 // 0, timeout=0.05, what="the probe")


def test_async_wait_until_takes_plain_and_coroutine_predicates() -> None:
    async def main() -> None:
        calls = itertools.count()

        async def probe() -> int:
            return next(calls) >= 3 and 7

        assert await async_wait_until(probe) == 7
        assert await async_wait_until(lambda: 5) == 5

        async def failing() -> int:
            raise ValueError("not yet")

        with pytest.raises(ConditionTimeout, match="ValueError"):
            await async_wait_until(failing, timeout=0.05)
        with pytest.raises(ConditionTimeout, match="condition did not hold"):
            await async_wait_until(lambda: 0, timeout=0.05)

    asyncio.run(main())
