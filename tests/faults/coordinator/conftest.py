"""Fixtures: real coordinator processes on the session etcd, one cluster name per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from coordinator.testing import CoordinatorCluster
from mabeam.etcd.embedded import EmbeddedEtcd


@pytest.fixture
def coordinators(etcd_server: EmbeddedEtcd, cluster_name: str) -> Iterator[Callable[..., CoordinatorCluster]]:
    """Factory: start N coordinator processes (TTL 2 s); all stopped at teardown."""
    made: list[CoordinatorCluster] = []

    def make(nodes: int = 2) -> CoordinatorCluster:
        cluster = CoordinatorCluster(etcd_server.endpoint, cluster_name, nodes=nodes, lease_ttl=2)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.close()
