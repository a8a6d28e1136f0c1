"""Every daemon serves Prometheus /metrics from its own registry, and promtool accepts what each one serves."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest

from mabeam.dev.testing import wait_until

#: Per daemon kind, series its /metrics must carry (its own, and the ones the shared bootstrap adds).
EXPECTED = {
    "meshd": ("mabeam_mesh_members", "mabeam_etcd_connected", "mabeam_dataplane_messages_total",
              "mabeam_rejected_requests_total"),
    "agentd": ("agentd_agents", "agentd_worker_restarts_total", "agentd_model_calls_total",
               "mabeam_rejected_requests_total"),
    "coordinator": ("mabeam_coordinator_is_leader", "mabeam_coordinator_events_total",
                    "mabeam_coordinator_commit_groups_bucket", "mabeam_rejected_requests_total"),
}


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def scrapes(etcd_server) -> dict[str, str]:
    """One node with all three daemons; the text each one's /metrics serves once every expected series is in."""
    import uuid

    from mabeam.dev.cluster import DevCluster

    cluster = DevCluster(1, etcd=etcd_server.endpoint, cluster=f"metrics{uuid.uuid4().hex[:8]}", lease_ttl=2,
                         agentd=True, coordinator=True)
    try:
        cluster.start()
        node = cluster.nodes[0]
        daemons = {d.kind: d for d in node.daemons}
        assert set(daemons) == set(EXPECTED)
        texts: dict[str, str] = {}
        for kind, daemon in daemons.items():
            assert daemon.metrics_address, f"{kind} reported no metrics address in its ready line"

            def complete(kind: str = kind, address: str = daemon.metrics_address) -> bool:
                texts[kind] = _scrape(address)
                return all(series in texts[kind] for series in EXPECTED[kind])

            wait_until(complete, 15, what=f"{kind}'s series")
        return texts
    finally:
        cluster.close()


def test_each_daemon_serves_its_series_from_its_own_registry(scrapes: dict[str, str]) -> None:
    # Each registry holds that daemon's series only (no other daemon's, no prometheus-client globals).
    assert "agentd_" not in scrapes["meshd"] and "mabeam_coordinator_" not in scrapes["meshd"]
    assert "mabeam_mesh_" not in scrapes["coordinator"] and "agentd_" not in scrapes["coordinator"]
    assert "mabeam_mesh_" not in scrapes["agentd"] and "mabeam_coordinator_" not in scrapes["agentd"]


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (make promtool installs Debian's prometheus package as root)")
@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_promtool_accepts_every_daemons_metrics(scrapes: dict[str, str], kind: str) -> None:
    checked = subprocess.run(["promtool", "check", "metrics"], input=scrapes[kind], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0, f"promtool on {kind}'s /metrics:\n{checked.stdout}{checked.stderr}"
