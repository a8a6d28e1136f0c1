"""Fixtures for data-plane fault tests: peer processes are always cleaned up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshd.dataplane.testing import PeerProcess


@pytest.fixture
def peer_processes() -> Iterator[list[PeerProcess]]:
    """Append PeerProcess objects here; each is closed (or killed) after the test."""
    processes: list[PeerProcess] = []
    yield processes
    for process in processes:
        process.close()
