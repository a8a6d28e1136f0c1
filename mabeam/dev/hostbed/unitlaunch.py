"""The bed's launcher that starts every daemon from its installed systemd unit (issue 17).

Each bed host gets a file system of its own (:class:`mabeam.dev.hostroot.HostRoot`
over a shared image holding the venv): ``deploy/install.py`` installs the units,
the mabeam user, the directories and the production configs with the host's
values, exactly as ``make install`` on a real host (with the bed's CA, the host's
certificate and the bed's token key: tokens and mTLS on), in the documented
``GRPC=network`` mode (gRPC on the host's address, the cluster network in the
units' allow-list) so the test process and the load generators reach every
daemon as clients on other hosts would. :meth:`UnitLauncher.spec` then returns
the command that runs the unit's ``ExecStart`` as systemd would (the unit's
user, sandbox mounts and seccomp filters, clean environment, a notify socket
per daemon that tests read: READY, STATUS, WATCHDOG, STOPPING).

Test-only settings go in drop-ins, as an operator's would: the example agent
types and one worker for agentd (the workload spawns ``counter``/``relay``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

from mabeam.dev.hostbed.launch import HostContext, LaunchSpec
from mabeam.dev.hostbed.processes import Daemon
from mabeam.dev.hostroot import HostRoot, service_notify_socket
from mabeam.dev.notify import NotifySocket

#: Drop-ins every bed host gets (unit -> text): what an operator would set with ``systemctl edit``.
BED_DROPINS = {
    "agentd.service": "[Service]\nEnvironment=AGENTD_EXAMPLES=true AGENTD_WORKERS=1\n",
}


class UnitLauncher:
    """A :class:`mabeam.dev.hostbed.launch.Launcher` that runs the installed units (see the module docstring)."""

    def __init__(self, image: HostRoot, source: str | Path, base: str | Path,
                 dropins: dict[str, str] | None = None, installer_python: str = "/usr/bin/python3") -> None:
        self.image = image
        self.source = Path(source)
        self.base = Path(base)
        self.dropins = {**BED_DROPINS, **(dropins or {})}
        self.installer_python = installer_python
        #: The interpreter the bed's load generators use (they run beside the hosts, not in them).
        self.python = sys.executable
        self.roots: dict[str, HostRoot] = {}
        self.notify: dict[tuple[str, str], NotifySocket] = {}

    def root(self, host: HostContext | str) -> HostRoot:
        """The host's file system (booted and installed on first use)."""
        name = host if isinstance(host, str) else host.name
        if name not in self.roots:
            assert isinstance(host, HostContext), "a host's root is made from its HostContext"
            self.roots[name] = self._install(host)
        return self.roots[name]

    def _install(self, host: HostContext) -> HostRoot:
        root = HostRoot(self.base, host.name, self.image).boot()
        network = ipaddress.ip_network(f"{host.address}/24", strict=False)
        values = {"--node-id": host.name, "--address": host.address, "--network": str(network),
                  "--etcd": ",".join(host.etcd_endpoints), "--cluster": host.cluster, "--grpc": "network"}
        if host.security_toml:  # the bed's CA, the host's certificate and the token key, placed by the installer
            security = tomllib.loads(host.security_toml)["security"]
            values["--pki"] = str(Path(security["tls_cert"]).parent)
            values["--token-key"] = ",".join(str(key) for key in sorted(Path(security["token_keys"]).glob("*.pub")))
        flags = " ".join(f"{flag} {shlex.quote(value)}" for flag, value in values.items())
        # Steps 2-5 of `make install` (the image holds step 1, the venv): units, user, directories, configs.
        root.run(f"{shlex.quote(self.installer_python)} {self.source / 'deploy' / 'install.py'} --skip-venv {flags}")
        for unit, text in self.dropins.items():
            root.drop_in(unit, "50-bed", text)
        return root

    def spec(self, host: HostContext, kind: str) -> LaunchSpec:
        """See :class:`mabeam.dev.hostbed.launch.Launcher`: the unit's ExecStart on the host's file system."""
        root = self.root(host)
        unit = f"{kind}.service"
        control = self.base / f"{host.name}-control"
        if (host.name, kind) not in self.notify:
            control.mkdir(parents=True, exist_ok=True)
            control.chmod(0o755)  # the daemon's user reaches its socket and seccomp switches through it
            self.notify[(host.name, kind)] = NotifySocket(service_notify_socket(control, unit))
        return LaunchSpec(argv=root.service_argv(unit, control), ready_line=f"{kind} ready")

    def stop(self, host: HostContext | str, daemon: Daemon) -> int | None:
        """Stop a daemon as ``systemctl stop`` would: SIGTERM to the main process only (``KillMode=mixed``)
        or to the whole group (``control-group``), SIGKILL to what is left after ``TimeoutStopSec``.

        Returns the main process's exit code (None if it had to be killed).
        """
        proc = daemon.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else None
        spec = self.root(host).unit(f"{daemon.kind}.service")
        with contextlib.suppress(ProcessLookupError):
            if spec.kill_mode in ("mixed", "process"):
                os.kill(proc.pid, signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            code: int | None = proc.wait(spec.timeout_stop_sec)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the rest of the "control group"
        proc.wait()
        return code

    def close(self) -> None:
        """Unmount every host and close the notify sockets."""
        for notify in self.notify.values():
            notify.close()
        for root in self.roots.values():
            root.close()
