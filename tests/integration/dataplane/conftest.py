"""Fixtures for data-plane integration tests: real ZeroMQ sockets on loopback and ipc in a temp dir."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from meshd.dataplane import DataPlane, DataPlaneConfig, InMemoryRegistry
from meshd.dataplane.testing import started_planes


@pytest.fixture
def registry() -> InMemoryRegistry:
    """One registry shared by the planes of a test (a consistent cluster cache)."""
    return InMemoryRegistry()


@pytest.fixture
async def pair(registry: InMemoryRegistry) -> AsyncIterator[tuple[DataPlane, DataPlane]]:
    """Two linked data planes in this process (n0, n1), stopped afterwards."""
    planes = await started_planes(2, registry, DataPlaneConfig(default_call_timeout=3.0))
    try:
        yield planes[0], planes[1]
    finally:
        for plane in planes:
            await plane.stop()
