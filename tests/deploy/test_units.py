"""The units and configs in deploy/: systemd-analyze verify and security, and configs every daemon accepts.

These need only systemd-analyze (no root): the installed units are checked again on a test host
by test_host_install.py.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mabeam.dev.units import exec_spec, read_unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICES = ("meshd.service", "agentd.service", "coordinator.service", "mabeam-etcd.service")
ALL_UNITS = (*SERVICES, "mabeam.target")
MAX_EXPOSURE = 2.5  # "OK" or better (issue 17)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120)


def exposure(unit: Path) -> tuple[float, str]:
    result = analyze("security", "--offline=true", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1)), match.group(2)


@pytest.mark.parametrize("unit", SERVICES)
def test_each_service_scores_ok_in_systemd_analyze_security(unit: str) -> None:
    score, verdict = exposure(DEPLOY / unit)
    print(f"systemd-analyze security --offline=true {unit}: {score} {verdict}")  # pytest -s / -rP shows it
    assert score <= MAX_EXPOSURE, f"{unit}: {score} {verdict}"


def test_units_pass_systemd_analyze_verify_with_their_binaries_present(tmp_path: Path) -> None:
    """A test layout (--root) with the binaries the units name, systemd's own units beside ours."""
    analyze("--version")
    root = tmp_path / "root"
    system_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in ALL_UNITS:
        shutil.copy(DEPLOY / name, root / "etc/systemd/system" / name)
    for name in SERVICES:
        binary = root / exec_spec(read_unit(DEPLOY / name)).argv[0].lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    result = analyze("verify", f"--root={root}", *ALL_UNITS)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_a_missing_binary_fails_verify(tmp_path: Path) -> None:
    """The check above has teeth: without the layout, verify names the missing command."""
    result = analyze("verify", str(DEPLOY / "meshd.service"))
    assert result.returncode != 0 and "/opt/mabeam/bin/meshd" in result.stdout + result.stderr


@pytest.mark.parametrize("unit", SERVICES)
def test_units_start_the_daemon_with_the_config_install_places(unit: str) -> None:
    spec = exec_spec(read_unit(DEPLOY / unit))
    daemon = unit.removesuffix(".service").removeprefix("mabeam-")
    assert spec.type == "notify" and spec.notify_access == "main" and spec.user != "root"
    assert spec.no_new_privileges and spec.drop_capabilities and spec.protect_system == "strict"
    if daemon == "etcd":
        assert spec.argv == ["/usr/local/bin/etcd", "--config-file", "/etc/mabeam/etcd.conf.yml"]
        return
    assert spec.argv == [f"/opt/mabeam/bin/{daemon}", "--config", f"/etc/mabeam/{daemon}.toml"]
    assert 0 < spec.watchdog_sec <= 30
    if daemon == "agentd":  # SIGTERM to agentd only: it stops its workers itself (agents' terminate callbacks)
        assert spec.kill_mode == "mixed"


def _with_security_files(tmp_path: Path, daemon: str) -> Path:
    """The production config with its [security] paths moved under `tmp_path`, where the files exist
    (the configs name /etc/mabeam/tls and /etc/mabeam/token-keys; the daemons check the files at load)."""
    (tmp_path / "token-keys").mkdir(exist_ok=True)
    (tmp_path / "tls").mkdir(exist_ok=True)
    for name in ("ca.crt", "host-a.crt", "host-a.key"):
        (tmp_path / "tls" / name).write_text("PEM")
    config = tmp_path / f"{daemon}.toml"
    config.write_text((DEPLOY / f"{daemon}.production.toml").read_text().replace("/etc/mabeam/", f"{tmp_path}/"))
    return config


def test_production_configs_load_in_every_daemon(tmp_path: Path) -> None:
    from agentd.config import load_config
    from coordinator.config import load as load_coordinator
    from meshd.config import load as load_meshd

    meshd = load_meshd(_with_security_files(tmp_path, "meshd"), env={})
    assert meshd.grpc_host == "127.0.0.1" and meshd.dataplane.curve  # CURVE on the data plane
    assert meshd.dataplane.bind_host != "127.0.0.1" and meshd.dataplane.attach_address.startswith("ipc:///run/mabeam/")
    agentd = load_config(str(_with_security_files(tmp_path, "agentd")), env={})
    assert agentd.meshd_attach == meshd.dataplane.attach_address and agentd.grpc_address.startswith("127.0.0.1:")
    assert agentd.data_dir == "/var/lib/mabeam/agentd"  # the unit's StateDirectory
    assert agentd.etcd == meshd.etcd and agentd.cluster == meshd.cluster and agentd.http_address.startswith("127.0.0.1:")
    coordinator = load_coordinator(_with_security_files(tmp_path, "coordinator"), env={})
    assert coordinator.grpc_host == "127.0.0.1" and coordinator.etcd == meshd.etcd
    assert len({meshd.metrics_port, coordinator.metrics_port, int(agentd.metrics_address.rsplit(":", 1)[1])}) == 3
    # Secure by default: every daemon needs a token and a client certificate of the cluster's CA.
    for config in (meshd, agentd, coordinator):
        assert config.security.secure and config.security.token_keys == f"{tmp_path}/token-keys"
        assert config.security.tls_cert == f"{tmp_path}/tls/host-a.crt"


def _installer():
    spec = importlib.util.spec_from_file_location("deploy_install", DEPLOY / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installer_renders_host_values_into_the_configs() -> None:
    install = _installer()
    text = install.render_config((DEPLOY / "meshd.production.toml").read_text(),
                                 {"node_id": "host-b", "bind_host": "10.0.0.12", "etcd": ["10.0.0.11:2379"],
                                  "cluster": "blue", "tls_cert": "/etc/mabeam/tls/host-b.crt",
                                  "tls_key": "/etc/mabeam/tls/host-b.key"})
    import tomllib

    from meshd.config import MeshdConfig

    values = tomllib.loads(text)
    assert values.pop("security") == {"token_keys": "/etc/mabeam/token-keys", "tls_ca": "/etc/mabeam/tls/ca.crt",
                                      "tls_cert": "/etc/mabeam/tls/host-b.crt", "tls_key": "/etc/mabeam/tls/host-b.key"}
    config = MeshdConfig.model_validate(values)  # (its [security] files are checked in the test above)
    assert (config.node_id, config.dataplane.bind_host, config.etcd, config.cluster) == (
        "host-b", "10.0.0.12", ["10.0.0.11:2379"], "blue")
    with pytest.raises(install.InstallError, match="no 'missing_key ='"):
        install.render_config("a = 1\n", {"missing_key": "x"})


def test_installer_binds_grpc_on_the_host_only_in_network_mode() -> None:
    import argparse

    install = _installer()
    args = argparse.Namespace(node_id="host-c", cluster="prod", etcd=["10.0.0.11:2379"], address="10.0.0.13",
                              grpc="network", network=["10.0.0.0/24"])
    assert install.host_values("meshd", args)["grpc_host"] == "10.0.0.13"
    assert install.host_values("coordinator", args)["advertise_host"] == "10.0.0.13"
    assert install.host_values("agentd", args)["grpc_address"] == "10.0.0.13:7300"
    args.grpc = "loopback"
    assert "grpc_host" not in install.host_values("meshd", args)
    assert "IPAddressAllow=10.0.0.0/24\n" in install.network_dropin(["10.0.0.0/24"])


def test_installer_renders_an_etcd_member() -> None:
    install = _installer()
    members = {"host-a": "10.0.0.11", "host-b": "10.0.0.12", "host-c": "10.0.0.13"}
    text = install.render_etcd_config((DEPLOY / "etcd.production.yml").read_text(), "host-b", members, "mabeam-x")
    assert "name: host-b" in text and "advertise-client-urls: http://10.0.0.12:2379" in text
    assert "listen-peer-urls: https://10.0.0.12:2380" in text and "initial-cluster-token: mabeam-x" in text
    assert ("initial-cluster: host-a=https://10.0.0.11:2380,host-b=https://10.0.0.12:2380,"
            "host-c=https://10.0.0.13:2380") in text
    with pytest.raises(install.InstallError, match="not among"):
        install.render_etcd_config(text, "host-z", members, "t")


def test_installer_refuses_a_python_the_units_would_hide(monkeypatch, tmp_path: Path) -> None:
    install = _installer()
    with pytest.raises(install.InstallError, match="ProtectHome"):
        install.install_venv(tmp_path / "venv", "/root/.pyenv/versions/3.11.7/bin/python3")


PROBE = r"""
import mmap, os, socket
def attempt(name, call):
    try:
        call()
        print(name, "allowed")
    except OSError as error:
        print(name, "refused", error.errno)
attempt("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
attempt("rw", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE))
attempt("rwx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
attempt("setuid", lambda: os.setuid(os.getuid()))
attempt("sched_idle", lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)))
"""


def test_the_sandbox_wrapper_applies_a_units_seccomp_switches() -> None:
    """mabeam.dev.sandbox (how test hosts apply SystemCallFilter=, MemoryDenyWriteExecute=,
    RestrictAddressFamilies= without systemd) refuses what the meshd unit refuses, allows what meshd uses."""
    import ctypes.util
    import json
    import sys

    from mabeam.dev.sandbox import spec_for

    analyze("--version")
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed")
    unit = exec_spec(read_unit(DEPLOY / "meshd.service"))
    spec = spec_for(unit.system_call_filter, unit.system_call_error, unit.address_families,
                    unit.memory_deny_write_execute)
    assert {"execve", "mmap", "socket", "sched_setscheduler"} <= set(spec["allow"])
    assert not {"setuid", "chown", "mount", "bpf"} & set(spec["allow"])
    result = subprocess.run([sys.executable, "-m", "mabeam.dev.sandbox", "--spec", json.dumps(spec), "--",
                             sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert result.stdout.split("\n")[:-1] == ["inet allowed", "packet refused 97", "rw allowed", "rwx refused 1",
                                              "setuid refused 1", "sched_idle allowed"], result.stderr
