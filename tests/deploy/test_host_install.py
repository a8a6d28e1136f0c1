"""`make install` on a fresh host, then every unit started exactly as systemd would start it.

The host is a network namespace with its own address (10.77.0.1) and overlay
layers over /etc, /opt, /var, /run and /usr/local (mabeam.dev.hostroot), so the
installer writes the real paths and the machine stays untouched. Each service
runs its unit's ExecStart with the installed production config, as the unit's
user, with the unit's sandbox mounts, a fake NOTIFY_SOCKET and a journal-like
stderr; the checks are those of issue 17: READY=1 only once it serves,
STATUS= lines, WATCHDOG=1 that stops while the loop is blocked, STOPPING=1,
log lines journald understands.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mabeam.dev.hostroot import HostRoot, Service
from mabeam.dev.notify import watchdog_gap_while_blocked

SOURCE = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)  # the first test pays for the image (a venv) and the install
ADDRESS = "10.77.0.1"
NETWORK = "10.77.0.0/24"
#: Where the person (the test) makes the cluster's certificates and token keys before `make install` (/var is the host's).
PKI = "/var/tmp/mabeam-pki"
ISSUER = "/var/tmp/mabeam-issuer"
UNITS = ("meshd.service", "agentd.service", "coordinator.service")
WATCHDOG_S = 2.0  # the drop-in's WatchdogSec: pings every second
BLOCK_S = 5.0  # the debug signal blocks the loop past WatchdogSec, as a hang would
GRPC = {"meshd.service": ("127.0.0.1:7100", "mabeam.v1.MeshService"),
        "agentd.service": ("127.0.0.1:7300", "mabeam.v1.AgentService"),
        "coordinator.service": ("127.0.0.1:7200", "mabeam.v1.CoordinatorService")}


@dataclass
class Host:
    root: HostRoot
    netns: str
    run_dir: Path
    services: dict[str, Service] = field(default_factory=dict)

    def sh(self, script: str) -> str:
        return self.root.run(script, self.netns).stdout

    def start(self, unit: str) -> Service:
        service = Service(self.root, unit, self.netns, self.run_dir)
        self.services[unit] = service
        return service

    def health(self, unit: str, service: str = "") -> str:
        address, _ = GRPC[unit]
        tls = [f"--tls-{kind}={self.root.file(path)}" for kind, path in (("ca", f"{PKI}/ca.crt"),
                                                                          ("cert", f"{PKI}/ops.crt"),
                                                                          ("key", f"{PKI}/ops.key"))]
        result = subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-m", "mabeam.dev.probe",
                                 "health", address, service, *tls], capture_output=True, text=True, timeout=60)
        return result.stdout.strip()

    def uid_of(self, user: str) -> int:
        for line in self.root.file("/etc/passwd").read_text().splitlines():
            name, _, uid, *_ = line.split(":")
            if name == user:
                return int(uid)
        raise LookupError(user)


@pytest.fixture(scope="module")
def host(host_image: HostRoot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """host-a after `make install` and `make install-etcd`, with its etcd member running from its unit."""
    base = tmp_path_factory.mktemp("host")
    name = "mabeam-dep-a" + os.urandom(3).hex()
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (["link", "set", "lo", "up"], ["addr", "add", f"{ADDRESS}/32", "dev", "lo"]):
            subprocess.run(["ip", "-n", name, *command], check=True)
        host = Host(HostRoot(base, "host-a", host_image).boot(), name, base)
        # The install path deploy/README.md gives a person, verbatim (outside the netns: pip needs PyPI):
        # the cluster's CA, this host's certificate, a client's, and a token key pair, then make install.
        host.root.run(f"/opt/mabeam/bin/mabeam certs --dir {PKI} --node host-a={ADDRESS},127.0.0.1,localhost "
                      f"--client ops && /opt/mabeam/bin/meshctl token keygen --dir {ISSUER} --kid k1")
        host.root.run(f"make -C {SOURCE} install PY=/usr/bin/python3 NODE_ID=host-a ADDRESS={ADDRESS} "
                      f"NETWORK={NETWORK} ETCD={ADDRESS}:2379 CLUSTER=test PKI={PKI} TOKEN_KEY={ISSUER}/k1.pub")
        host.root.run(f"make -C {SOURCE} install-etcd PY=/usr/bin/python3 ETCD_MEMBER=host-a "
                      f"ETCD_PEERS=host-a={ADDRESS} NETWORK={NETWORK} CLUSTER=test")
        for unit in UNITS:  # what `systemctl edit` would do: a short watchdog and the test-only loop blocker
            host.root.drop_in(unit, "test", f"[Service]\nWatchdogSec={WATCHDOG_S:g}s\n"
                                            f"Environment=MABEAM_DEBUG_BLOCK_LOOP={BLOCK_S:g}\n")
        etcd = host.start("mabeam-etcd.service")
        etcd.wait_for("READY", "1", timeout=120)  # etcd speaks sd_notify too
        yield host
    finally:
        if "host" in locals():
            for service in reversed(list(host.services.values())):
                service.close()
            host.root.close()
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_install_creates_the_user_directories_configs_and_units(host: Host) -> None:
    out = host.sh("getent passwd mabeam; getent passwd mabeam-etcd; stat -c '%U:%G %a %n' /var/lib/mabeam "
                  "/run/mabeam /etc/mabeam /etc/mabeam/*.toml /etc/mabeam/etcd.conf.yml /etc/mabeam/tls "
                  "/etc/mabeam/tls/* /etc/mabeam/token-keys/*; "
                  "ls /etc/systemd/system /etc/sysusers.d /etc/tmpfiles.d /opt/mabeam/share/doc/mabeam")
    assert re.search(r"^mabeam:x:\d+:\d+:mabeam daemons:/var/lib/mabeam:/usr/sbin/nologin$", out, re.M)
    assert "mabeam-etcd:x:" in out
    for line in ("mabeam:mabeam 750 /var/lib/mabeam", "mabeam:mabeam 750 /run/mabeam", "root:root 755 /etc/mabeam",
                 "root:mabeam 640 /etc/mabeam/meshd.toml", "root:mabeam 640 /etc/mabeam/agentd.toml",
                 "root:mabeam 640 /etc/mabeam/coordinator.toml", "root:mabeam-etcd 640 /etc/mabeam/etcd.conf.yml",
                 "root:mabeam 750 /etc/mabeam/tls", "root:mabeam 640 /etc/mabeam/tls/host-a.key",
                 "root:mabeam 644 /etc/mabeam/tls/host-a.crt", "root:mabeam 644 /etc/mabeam/tls/ca.crt",
                 "root:root 644 /etc/mabeam/token-keys/k1.pub"):
        assert line in out
    for name in ("meshd.service", "agentd.service", "coordinator.service", "mabeam.target",
                 "mabeam-etcd.service", "mabeam.conf", "mabeam-etcd.conf", "README.md"):
        assert name in out
    for unit in (*UNITS, "mabeam-etcd.service"):  # the cluster network joins the units' IP allow-list
        dropin = host.root.file(f"/etc/systemd/system/{unit}.d/50-network.conf").read_text()
        assert f"IPAddressAllow={NETWORK}" in dropin
    meshd = host.root.file("/etc/mabeam/meshd.toml").read_text()
    assert 'node_id = "host-a"' in meshd and f'bind_host = "{ADDRESS}"' in meshd
    assert f'etcd = ["{ADDRESS}:2379"]' in meshd and 'cluster = "test"' in meshd and "curve = true" in meshd
    assert 'grpc_host = "127.0.0.1"' in meshd  # the default: gRPC on loopback only
    assert 'tls_cert = "/etc/mabeam/tls/host-a.crt"' in meshd and 'token_keys = "/etc/mabeam/token-keys"' in meshd
    assert "ca.key" not in out  # never the CA's private key on a host


def test_installed_units_verify_and_score_ok(host: Host) -> None:
    units = " ".join(f"/etc/systemd/system/{u}" for u in (*UNITS, "mabeam.target", "mabeam-etcd.service"))
    result = host.root.run(f"systemd-analyze verify {units} 2>&1", host.netns)
    assert result.stdout.strip() == "", result.stdout  # not even a warning
    for unit in (*UNITS, "mabeam-etcd.service"):
        out = host.sh(f"systemd-analyze security --offline=true /etc/systemd/system/{unit} 2>&1 | tail -1")
        score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1))
        assert score <= 2.5, out


def test_services_run_from_their_units_and_notify_systemd(host: Host) -> None:
    mabeam_uid = host.uid_of("mabeam")
    assert host.services["mabeam-etcd.service"].uid() == host.uid_of("mabeam-etcd")  # etcd is sandboxed too
    for unit in UNITS:  # meshd first: agentd attaches to it (After=meshd.service)
        service = host.start(unit)
        ready = service.wait_for("READY", "1", timeout=120)
        address, name = GRPC[unit]
        # READY=1 came only once it serves: health answers SERVING at once.
        assert host.health(unit) == "SERVING", service.log()
        if unit != "coordinator.service":
            assert host.health(unit, name) == "SERVING"
        assert ready.pid == service.pid  # NotifyAccess=main
        assert ready.fields.get("STATUS")
        # Exactly the unit's command, as the unit's unprivileged user.
        spec = host.root.unit(unit)
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
        assert cmdline[-len(spec.argv):][1:] == spec.argv[1:] and cmdline[1] == spec.argv[0], cmdline
        assert service.uid() == mabeam_uid != 0
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{service.pid}/status").read_text().splitlines()
                      if ":\t" in line)
        # No capabilities, no way to gain any, and the unit's seccomp filters (system calls, W^X, families).
        assert status["CapEff"].strip("0\n ") == "" and status["CapBnd"].strip("0\n ") == "", status
        assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
        assert int(status["Seccomp_filters"]) >= 3, status["Seccomp_filters"]
    # The unit's sandbox, as mounts in the service's own namespace: read-only system, private /tmp and /dev,
    # no home directories, its StateDirectory writable.
    agentd = host.services["agentd.service"]
    sandbox = subprocess.run(
        ["nsenter", f"--mount=/proc/{agentd.pid}/ns/mnt", "--", "sh", "-c",
         "for p in /opt/mabeam /etc/mabeam /var/lib/mabeam /run; do touch $p/probe 2>/dev/null && echo rw $p; done; "
         "touch /var/lib/mabeam/agentd/probe && rm /var/lib/mabeam/agentd/probe && echo rw state; "
         "ls -A /root /tmp | tr '\\n' ' '; echo; ls /dev | tr '\\n' ' '"],
        capture_output=True, text=True, timeout=30).stdout.splitlines()
    assert sandbox[0] == "rw state", sandbox  # nothing else was writable
    assert sandbox[1].split() == ["/root:", "/tmp:"], sandbox  # empty home, private /tmp
    assert sandbox[2].split() == ["full", "null", "ptmx", "pts", "random", "shm", "tty", "urandom", "zero"]

    meshd = host.services["meshd.service"].notify
    status = meshd.wait_for("STATUS", "1 members, mesh leader host-a, 0 names, 1 local endpoints, etcd connected",
                            timeout=30)
    assert status.pid == host.services["meshd.service"].pid

    for unit in UNITS:
        service = host.services[unit]
        first = service.notify.wait_for("WATCHDOG", "1", timeout=30)
        service.notify.wait_for("WATCHDOG", "1", after=first.at + WATCHDOG_S, timeout=30)  # it keeps coming
        gap = watchdog_gap_while_blocked(service.notify, lambda s=service: os.kill(s.pid, signal.SIGUSR2), BLOCK_S)
        assert gap >= BLOCK_S - 0.5 > WATCHDOG_S, f"{unit}: the watchdog kept pinging a blocked loop ({gap:.2f}s)"

    for unit in reversed(UNITS):
        service = host.services[unit]
        assert service.stop() == 0, service.log()
        assert service.notify.with_field("STOPPING", "1")
        lines = [line for line in service.log().splitlines() if line.strip()]
        daemon = unit.split(".")[0]
        logged = [line for line in lines if f" daemon={daemon} " in line]
        assert logged, service.log()
        for line in logged:  # journald reads the priority from the prefix; no secret in any line
            assert re.match(r"^<[0-7]>level=(debug|info|warning|error|critical) daemon=\w+ node=host-a ", line), line
            assert "secret" not in line.lower()
