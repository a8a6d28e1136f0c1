"""Fixtures shared by the whole suite: real etcd servers on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from mabeam.etcd.embedded import EmbeddedEtcd


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EmbeddedEtcd]:
    """One real etcd for the session; tests isolate themselves with `cluster_name`."""
    server = EmbeddedEtcd(name="mabeam-test-etcd")
    server.start()
    yield server
    server.close()


@pytest.fixture
def private_etcd() -> Iterator[EmbeddedEtcd]:
    """A real etcd of the test's own, for tests that stop, kill or restart it."""
    server = EmbeddedEtcd(name="mabeam-private-etcd")
    server.start()
    yield server
    server.close()


@pytest.fixture
def cluster_name() -> str:
    """A unique cluster name, so tests sharing one etcd never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}"
