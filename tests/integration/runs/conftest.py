"""Durable-runs fixtures: a dev cluster of agentd sharing one runs store, per backend."""

from __future__ import annotations

import uuid

import pytest

#: [runs] settings for tests: short leases and graces so failover and cancellation tests finish quickly.
RUNS_CONFIG = {"lease_ttl": 2, "cancel_grace_s": 1.0, "janitor_interval_s": 1.0, "pending_grace_s": 1.0}


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def runs_cluster(request, etcd_server):
    """Two nodes (meshd + agentd each) sharing one runs store: a SQLite file, or a PostgreSQL database."""
    from mabeam.dev.cluster import DevCluster

    store = ""
    if request.param == "postgres":
        store = request.getfixturevalue("postgres_server").create_database()
    cluster = DevCluster(2, etcd=etcd_server.endpoint, cluster=f"r{uuid.uuid4().hex[:10]}",
                         lease_ttl=2, agentd=True, runs_store=store, runs_config=RUNS_CONFIG)
    cluster.backend = request.param  # type: ignore[attr-defined]
    cluster.start()
    yield cluster
    cluster.close()


@pytest.fixture
def run_id() -> str:
    """A fresh run id."""
    return f"run-{uuid.uuid4().hex[:12]}"
