"""Fixtures for agentd unit tests: a runtime with the test agent types."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agents_for_tests import JOURNAL, make_registry  # noqa: E402

from agentd.runtime import Runtime  # noqa: E402


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    """A started runtime (in-memory checkpoints), stopped after the test."""
    JOURNAL.clear()
    rt = Runtime(make_registry(), mailbox_capacity=100)
    await rt.start()
    yield rt
    await rt.stop()
