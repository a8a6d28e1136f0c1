"""The bed running every daemon from its installed systemd unit, then a rolling upgrade of all three hosts.

Each host is installed by deploy/install.py (units, mabeam user, production configs with the host's
values, GRPC=network so clients on other hosts reach it) on an overlay file system of its own, and
each daemon starts as its unit says (mabeam.dev.hostbed.unitlaunch): ExecStart, Environment=, the
mabeam user, the sandbox mounts and seccomp filters, a notify socket per daemon.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mabeam.dev.hostbed import Host, HostBed
from mabeam.dev.hostbed.launch import KINDS
from mabeam.dev.hostbed.unitlaunch import UnitLauncher
from mabeam.dev.hostbed.workload import Workload
from mabeam.dev.hostroot import HostRoot
from mabeam.dev.notify import watchdog_gap_while_blocked
from mabeam.dev.security import DevSecurity

SOURCE = Path(__file__).resolve().parents[2]
#: The health service each checks (a standby coordinator serves, but its CoordinatorService answers for the leader).
SERVICES = {"meshd": "mabeam.v1.MeshService", "agentd": "mabeam.v1.AgentService", "coordinator": ""}
NEW_VERSION = "0.1.1+upgrade.test"
WATCHDOG_S = 2.0
BLOCK_S = 4.0
#: A short watchdog and the test-only loop blocker on every daemon, as `systemctl edit` would set them.
TEST_DROPIN = f"[Service]\nWatchdogSec={WATCHDOG_S:g}s\nEnvironment=MABEAM_DEBUG_BLOCK_LOOP={BLOCK_S:g}\n"

pytestmark = pytest.mark.timeout(1200)  # three installs of a new version, each host stopped and started


@pytest.fixture
def unit_bed(bed_support: None, host_image: HostRoot) -> Iterator[HostBed]:
    """Three hosts over a three-member etcd cluster, every daemon from its unit."""
    base = Path(tempfile.mkdtemp(prefix="mb-units-"))  # short: notify sockets live here (108-byte limit)
    launcher = UnitLauncher(host_image, SOURCE, base,
                            dropins={f"{kind}.service": TEST_DROPIN for kind in ("meshd", "coordinator")}
                            | {"agentd.service": TEST_DROPIN + "Environment=AGENTD_EXAMPLES=true AGENTD_WORKERS=1\n"})
    bed = HostBed(hosts=3, etcd_members=3, launcher=launcher)
    try:
        yield bed.start(timeout=300.0)
    finally:
        bed.close()
        launcher.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def release() -> Iterator[Path]:
    """A directory in memory (/dev/shm) for the new release and pip's build: no disk writes beside etcd's."""
    directory = Path(tempfile.mkdtemp(prefix="mb-release-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def new_version_source(directory: Path) -> Path:
    """This checkout as a release with a new version number (what `git checkout <new version>` gives a person)."""
    archive = subprocess.run(["git", "-C", str(SOURCE), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, archive):
        source = SOURCE / name
        if source.is_file():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, directory / name)
    for path, pattern in ((directory / "pyproject.toml", r'(?m)^version = "[^"]+"'),
                          (directory / "mabeam" / "__init__.py", r'(?m)^__version__ = "[^"]+"')):
        text, count = re.subn(pattern, lambda m: m.group(0).split("=")[0] + f'= "{NEW_VERSION}"', path.read_text())
        assert count == 1, path
        path.write_text(text)
    return directory


def check_started_from_unit(launcher: UnitLauncher, host: Host, kind: str, security: DevSecurity) -> None:
    """The daemon is its unit's main process, as the mabeam user under the unit's seccomp filters, READY and pinging."""
    root = launcher.root(host.name)
    uid = next(int(line.split(":")[2]) for line in root.file("/etc/passwd").read_text().splitlines()
               if line.startswith("mabeam:"))
    daemon, notify = host.daemons[kind], launcher.notify[(host.name, kind)]
    ready = notify.wait_for("READY", "1", timeout=10)
    assert ready.pid == daemon.pid  # the main process, and it came up from the unit's command
    assert ready.fields.get("STATUS"), ready.fields  # a line for `systemctl status` from the first READY
    # READY=1 meant serving: gRPC health of the daemon's service answers SERVING from another host's view.
    credentials = grpc.ssl_channel_credentials(security.ca.read_bytes(), security.certs["client"][1].read_bytes(),
                                               security.certs["client"][0].read_bytes())
    with grpc.secure_channel(host.endpoint(kind), credentials) as channel:  # mTLS (health needs no token)
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICES[kind]),
                                                           timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, (kind, answer)
        if kind == "meshd":  # the production config's [security]: no token, no call
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary("/mabeam.v1.MeshService/ListMembers")(b"", timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value
    with grpc.insecure_channel(host.endpoint(kind)) as plain, pytest.raises(grpc.RpcError):  # and no plaintext
        health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
    status = Path(f"/proc/{daemon.pid}/status").read_text()
    assert re.search(rf"^Uid:\t{uid}\t", status, re.M) and uid != 0, status
    assert re.search(r"^Seccomp:\t2$", status, re.M) and re.search(r"^NoNewPrivs:\t1$", status, re.M)
    cmdline = Path(f"/proc/{daemon.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:4] == [f"/opt/mabeam/bin/{kind}".encode(), b"--config", f"/etc/mabeam/{kind}.toml".encode()]
    first = notify.wait_for("WATCHDOG", "1", after=ready.at, timeout=10)
    notify.wait_for("WATCHDOG", "1", after=first.at + WATCHDOG_S, timeout=10)


def stop_local_load(workload: Workload, host: Host) -> None:
    """Stop the load generator of `host` (its records stay; the other hosts' load goes on)."""
    daemon = workload.loads.pop(host.name)
    daemon.terminate()
    daemon.wait_stopped(time.monotonic() + 30.0 * workload.slow)
    workload.bed.note(f"load on {host.name} stopped")


async def versions(bed: HostBed) -> dict[str, str]:
    from mabeam_client.mesh import MeshClient

    async with MeshClient(bed.host(1).endpoint("meshd"), timeout=5.0) as mesh:
        return {member.node_id: member.version for member in await mesh.members()}


async def test_units_on_the_bed_then_a_rolling_upgrade_loses_nothing(unit_bed: HostBed, release: Path) -> None:
    """Every daemon of every host runs its unit's command as the mabeam user and tells systemd READY once it
    serves, pings the watchdog (which stops when its loop blocks); then the hosts are upgraded one at a time
    as deploy/README.md says (stop mabeam.target, make install, start) under load, and nothing acknowledged
    is lost (the bed's invariants: counters, bids, names and groups, fencing, typed failures)."""
    bed = unit_bed
    launcher = bed.launcher
    assert isinstance(launcher, UnitLauncher)
    workload = Workload(bed)
    try:
        await workload.start()
        await workload.wait_progress()

        for host in bed.hosts:
            for kind in KINDS:
                check_started_from_unit(launcher, host, kind, bed.security)
        host = bed.host(3)  # one blocked loop is enough on the bed (tests/deploy blocks each kind)
        notify = launcher.notify[(host.name, "coordinator")]
        gap = watchdog_gap_while_blocked(notify, lambda: host.daemons["coordinator"].signal(signal.SIGUSR2), BLOCK_S)
        assert gap >= BLOCK_S - 0.5 > WATCHDOG_S
        await workload.wait_progress(since=bed.note("blocked coordinator loop resumed"))

        # The rolling upgrade of deploy/README.md, the coordinator leader's host last.
        source = new_version_source(release / "mabeam")
        leader = await workload.coordinator_leader()
        for host in [h for h in bed.hosts if h is not leader] + [leader]:
            # The host's own clients go down with it (deploy/README.md: stop them first). Left running, a call
            # that reaches agentd in the instant its gRPC server stops is answered CANCELLED by gRPC itself.
            stop_local_load(workload, host)
            bed.note(f"upgrade {host.name}: systemctl stop mabeam.target")
            for kind in ("coordinator", "agentd", "meshd"):  # the target's stop order (agentd After=meshd)
                assert launcher.stop(host.name, host.daemons[kind]) == 0  # clean exits, per the units' KillMode
                assert launcher.notify[(host.name, kind)].with_field("STOPPING", "1")
            # On real hosts the install runs on the stopped host alone; here it shares the machine, and the
            # disk with the etcd members' fsyncs (a 15 s fsync stall expired every lease once): the release and
            # pip's build directory are in memory, the install at the lowest CPU priority.
            launcher.root(host.name).run(f"TMPDIR={source.parent} nice -n 19 make -C {source} install "
                                         "PY=/usr/bin/python3", timeout=900)
            bed.note(f"upgrade {host.name}: make install done; systemctl start mabeam.target")
            for kind in ("meshd", "agentd", "coordinator"):
                bed.restart(host, kind, timeout=120.0)
            await workload.spawn_agents(host)  # the agents this host ran, back from their checkpoints
            workload.start_load(host)  # and its clients
            started = bed.note(f"upgrade {host.name}: serving")
            assert (await versions(bed))[host.name] == NEW_VERSION
            await workload.wait_registry_converged(started, exact=False, until=started)
            await workload.wait_progress(since=started)
        assert set((await versions(bed)).values()) == {NEW_VERSION}
        await workload.finish()  # every invariant over everything the load recorded
    finally:
        workload.close()
