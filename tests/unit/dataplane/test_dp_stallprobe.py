"""The event-loop stall probe (mabeam.dataplane.stallprobe): off by default, records a blocked loop."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mabeam.dataplane import stallprobe
from mabeam.dev.testing import async_wait_until, slow


def _ticked(probe: stallprobe.StallProbe, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return probe.ticks >= n

    return check


async def test_off_unless_the_variable_names_a_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(stallprobe.ENV, raising=False)
    assert stallprobe.start_from_env("x") is None


async def test_a_blocked_loop_is_recorded_as_a_stall_with_its_stack(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(stallprobe.ENV, str(tmp_path))
    probe = stallprobe.start_from_env("test")
    assert probe is not None
    try:
        await async_wait_until(_ticked(probe, 3), timeout=5, interval=0.001, what="probe ticks")
        # The stall under test: the loop thread busy for at least 30 ms, and until the watchdog thread has
        # had the CPU to see it (on two busy cores a thread can wait longer than that for a turn).
        stacks = probe.stacks
        started = time.monotonic()
        deadline = started + slow(5.0)
        while time.monotonic() < started + 0.03 or (probe.stacks == stacks and time.monotonic() < deadline):
            pass
        await async_wait_until(_ticked(probe, probe.ticks + 1), timeout=5, interval=0.001, what="a tick after")
    finally:
        probe.stop()
    records = [json.loads(line) for line in probe.path.read_text().splitlines()]
    stalls = [r for r in records if r["kind"] == "stall"]
    assert any(r["late_us"] >= 20_000 for r in stalls)
    # The watchdog saw the loop silent and took its stack (the busy loop above is in this test).
    stacks = [r for r in records if r["kind"] == "stack"]
    assert any("test_dp_stallprobe.py" in line for r in stacks for line in r["stack"])
