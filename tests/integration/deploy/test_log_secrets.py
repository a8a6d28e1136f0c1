"""A secret in a daemon's config never reaches its log (stderr, which systemd sends to the journal).

meshd's CURVE secret key is the secret its config can hold today: a run from a config file that holds
it, and a config that gets it wrong, both leave it out of every line.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import zmq

from mabeam.dev.notify import NotifySocket


def meshd_config(tmp_path: Path, etcd: str, cluster: str, public: str, secret: str) -> Path:
    path = tmp_path / "meshd.toml"
    path.write_text(f'node_id = "n1"\ncluster = "{cluster}"\netcd = ["{etcd}"]\ngrpc_port = 0\nmetrics_port = 0\n'
                    f'lease_ttl = 2\n\n[dataplane]\nbind_host = "127.0.0.1"\nbase_port = 0\ncurve = true\n'
                    f'curve_public_key = "{public}"\ncurve_secret_key = {secret}\n'
                    f'attach_address = "ipc://{tmp_path}/n1.attach"\n')
    return path


def test_a_secret_key_in_the_config_never_reaches_the_log(etcd_server, cluster_name: str, tmp_path: Path) -> None:
    """A whole life (start, READY, stop) from a config holding the key: no line has it."""
    public, secret = (key.decode() for key in zmq.curve_keypair())
    config = meshd_config(tmp_path, etcd_server.endpoint, cluster_name, public, f'"{secret}"')
    notify = NotifySocket(tmp_path / "meshd.notify")
    log = tmp_path / "meshd.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "meshd", "--config", str(config)],
                                env={"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": notify.path},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        notify.wait_for("READY", "1", timeout=60)
        notify.wait_for("STATUS", "1 members, mesh leader n1, 0 names, 0 local endpoints, etcd connected",
                        timeout=30)  # it has logged what a start logs
        proc.send_signal(signal.SIGTERM)  # and what a stop logs (the exit code is test_notify.py's business)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    output = log.read_text()
    assert "meshd ready" in output and "daemon=meshd node=n1" in output, output  # it logged, as the journal reads
    assert secret not in output


def test_a_wrong_secret_in_the_config_is_named_not_shown(tmp_path: Path) -> None:
    """A config error goes to the journal too: the bad field is named, its value left out."""
    secret = "31415926535897932384626"  # a key given as a number: refused (not a string)
    config = meshd_config(tmp_path, "127.0.0.1:2379", "c", "p" * 40, secret)
    result = subprocess.run([sys.executable, "-m", "meshd", "--config", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "dataplane.curve_secret_key" in result.stderr and "not shown" in result.stderr, result.stderr
    assert secret not in result.stdout + result.stderr
