"""meshctl auction | bid | var | ledger | vote against a real coordinator, with --json (integers stay integers,
JSON fields arrive parsed)."""

from __future__ import annotations

import json
import subprocess
import sys


def _meshctl(endpoint: str, *args: str) -> dict | list:
    out = subprocess.run([sys.executable, "-m", "mabeam_client.cli", "--json", *args[:1], "--coordinator", endpoint,
                          *args[1:]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cli_round_trip(coordinators) -> None:
    # One command of each family, each answering JSON a script can use.
    cluster = coordinators(1)
    endpoint = cluster.coordinator_endpoints[0]
    assert _meshctl(endpoint, "ledger", "deposit", "alice", "100")["available"] == 100
    created = _meshctl(endpoint, "auction", "create", "--kind", "sealed", "--config", '{"pricing":"first"}',
                       "--escrow")
    ack = _meshctl(endpoint, "bid", created["id"], "--bidder", "alice", "--amount", "30")
    assert ack["seq"] == 1
    assert _meshctl(endpoint, "ledger", "balance", "alice")["held"] == 30
    closed = _meshctl(endpoint, "auction", "close", created["id"])
    assert closed["outcome"]["winner"] == "alice"
    assert _meshctl(endpoint, "var", "create", "mode", '"a"', "--schema", '{"type":"string"}')["version"] == 1
    assert _meshctl(endpoint, "var", "set", "mode", '"b"')["version"] == 2
    vote = _meshctl(endpoint, "vote", "create", "--config",
                    '{"rule":"majority","options":["a","b"],"voters":{"v1":1}}', "--bind", "mode")
    _meshctl(endpoint, "vote", "cast", vote["id"], "--voter", "v1", "--choice", "a")
    _meshctl(endpoint, "vote", "close", vote["id"])
    assert _meshctl(endpoint, "var", "get", "mode")["value"] == "a"
    assert len(_meshctl(endpoint, "auction", "list")) == 2
    bad = subprocess.run([sys.executable, "-m", "mabeam_client.cli", "bid", "--coordinator", endpoint, "nope",
                          "--bidder", "x", "--amount", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stderr
