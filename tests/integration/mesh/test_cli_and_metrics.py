"""The CLIs and /metrics against real processes: meshctl --json, mabeam up start/stop, Prometheus series."""

import json
import os
import signal
import subprocess
import sys
import urllib.request

from mabeam.dev.testing import ConditionTimeout, wait_until


def meshctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mabeam_client.cli", "--endpoint", endpoint, *args],
                          capture_output=True, text=True, timeout=30)


def test_meshctl_json_and_errors(dev_cluster) -> None:
    cluster = dev_cluster(2)
    endpoint = cluster.endpoints[0]
    members = json.loads(meshctl(endpoint, "members", "--json").stdout)  # --json after the subcommand
    assert sorted(m["node_id"] for m in members) == ["node-1", "node-2"]
    assert json.loads(meshctl(endpoint, "--json", "members").stdout) == members  # and before it
    leader = wait_until(lambda: json.loads(meshctl(endpoint, "--json", "leader").stdout)["node_id"], 5.0,
                        what="a leader")
    assert leader in {"node-1", "node-2"}
    nobody = json.loads(meshctl(endpoint, "--json", "leader", "coordinator").stdout)
    assert nobody["role"] == "coordinator" and nobody["node_id"] == ""
    assert meshctl(endpoint, "register", "cli-name", "agent-1").returncode == 0
    assert json.loads(meshctl(endpoint, "--json", "lookup", "cli-name").stdout)["target"]["agent_id"] == "agent-1"
    assert "cli-name" in meshctl(endpoint, "names").stdout
    assert json.loads(meshctl(endpoint, "--json", "ping").stdout)["etcd_connected"] is True
    bad = meshctl(endpoint, "lookup", "bad name")
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "name:" in bad.stderr
    missing = meshctl(endpoint, "lookup", "nobody")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_metrics_endpoint_exports_the_mesh(dev_cluster) -> None:
    cluster = dev_cluster(2)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://{cluster.nodes[0].metrics_address}/metrics", timeout=2) as r:
            return r.read().decode()

    series = ("mabeam_mesh_members 2.0", "mabeam_etcd_connected 1.0", 'mabeam_mesh_leader_term{role="mesh"}',
              "mabeam_registry_names", 'mabeam_etcd_request_seconds_count{op="txn"}',
              "mabeam_watch_lag_seconds_count")
    # The election and the first transaction may land after the members gauge: wait for every series.
    last: list[str] = [""]

    def complete() -> bool:
        last[0] = scrape()
        return all(s in last[0] for s in series)

    try:
        wait_until(complete, 10.0, what="every mesh series exported")
    except ConditionTimeout:
        missing = [s for s in series if s not in last[0]]
        raise AssertionError(f"missing series: {missing}") from None


def test_mabeam_up_runs_and_stops_cleanly(etcd_server, cluster_name) -> None:
    # Ports chosen by the OS (the default of `mabeam up --base-port 0`), read back from its output.
    proc = subprocess.Popen([sys.executable, "-m", "mabeam.cli", "up", "--nodes", "2", "--base-port", "0",
                             "--etcd", etcd_server.endpoint, "--cluster", cluster_name],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        while not any("Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "mabeam up exited early:\n" + "".join(lines)
            lines.append(line)
        output = "".join(lines)
        endpoints = [line.split()[2] for line in lines if line.startswith("node-")]
        assert len(endpoints) == 2 and all(e.startswith("127.0.0.1:") for e in endpoints), output
        pids = [int(line.split("pid")[1]) for line in lines if line.startswith("node-")]
        for pid in pids:  # each node is its own OS process with its node id on its command line
            cmdline = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
            assert "--node-id node-" in cmdline
        members = json.loads(meshctl(endpoints[0], "--json", "members").stdout)
        assert len(members) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
