"""Fixtures shared by the whole suite: real etcd servers on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from mabeam.etcd.embedded import EmbeddedEtcd

# No per-example deadline and no "too slow" health check anywhere: on two shared, busy cores even a pure
# example can take longer than hypothesis's 200 ms, and many properties (fuzzing services) do I/O. Per-test
# @settings still choose max_examples; they inherit this.
settings.register_profile("mabeam", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mabeam")


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EmbeddedEtcd]:
    """One real etcd for the session; tests isolate themselves with `cluster_name`."""
    with EmbeddedEtcd(name="mabeam-test-etcd") as server:
        yield server


@pytest.fixture
def private_etcd() -> Iterator[EmbeddedEtcd]:
    """A real etcd of the test's own, for tests that stop, kill or restart it."""
    with EmbeddedEtcd(name="mabeam-private-etcd") as server:
        yield server


@pytest.fixture
def cluster_name() -> str:
    """A unique cluster name, so tests sharing one etcd never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def dev_cluster(etcd_server: EmbeddedEtcd, cluster_name: str):
    """Factory for clusters of real meshd processes (ports bound by the daemons); all stopped at teardown.

    ``own_etcd=True`` gives the cluster an embedded etcd of its own (for tests that stop it);
    ``agentd``/``coordinator`` add those daemons to every node; ``runs_store`` (default: one SQLite
    file shared by the cluster's agentd) and ``runs_config`` (``[runs]`` settings) configure durable runs.
    """
    from mabeam.dev.cluster import DevCluster

    clusters: list[DevCluster] = []

    def make(nodes: int = 3, lease_ttl: int = 2, own_etcd: bool = False, agentd: bool = False,
             coordinator: bool = False, runs_store: str = "", runs_config: dict | None = None) -> DevCluster:
        cluster = DevCluster(nodes, etcd=None if own_etcd else etcd_server.endpoint, cluster=cluster_name,
                             lease_ttl=lease_ttl, agentd=agentd, coordinator=coordinator, runs_store=runs_store,
                             runs_config=runs_config)
        clusters.append(cluster)
        return cluster.start()

    yield make
    for cluster in clusters:
        cluster.close()


@pytest.fixture
def coordinators(etcd_server: EmbeddedEtcd, cluster_name: str):
    """Factory: N real coordinator processes (no meshd, lease TTL 2 s) on the session etcd; stopped at teardown.

    Use ``cluster.coordinators`` (the processes), ``cluster.coordinator_endpoints`` and ``cluster.leader()``.
    """
    from mabeam.dev.cluster import DevCluster

    made: list[DevCluster] = []

    def make(nodes: int = 2) -> DevCluster:
        cluster = DevCluster(nodes, etcd=etcd_server.endpoint, cluster=cluster_name, lease_ttl=2, meshd=False,
                             coordinator=True, node_prefix="coord-")
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture(scope="session")
def postgres_server():
    """One private PostgreSQL server for the session (Unix socket only, in a temp dir); tests take a database each."""
    from mabeam.dev.postgres import DevPostgres

    server = DevPostgres().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def runs_store_url(request, tmp_path) -> str:
    """A fresh runs store URL, once per backend: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'runs.sqlite'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture(scope="session")
def host_image(tmp_path_factory: pytest.TempPathFactory):
    """The image test hosts stack on (tests/deploy, tests/hosts): /opt/mabeam, the venv deploy/install.py
    builds from this checkout, and /usr/local/bin/etcd; built once per session (mabeam.dev.hostroot)."""
    from pathlib import Path

    from mabeam.dev.hostroot import make_image, missing_tools
    from mabeam.etcd.embedded import etcd_binary

    problems = missing_tools()
    if problems:
        pytest.skip("test hosts need " + "; ".join(problems))
    # The system Python, as on a real host: a pyenv one lives under /root, which ProtectHome hides.
    return make_image(tmp_path_factory.mktemp("image"), Path(__file__).resolve().parents[1],
                      python="/usr/bin/python3", etcd_binary=etcd_binary())
