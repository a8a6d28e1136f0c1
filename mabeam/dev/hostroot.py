"""A host's filesystem for tests, and the units' services started in it the way systemd would start them.

A :class:`HostRoot` is a directory of overlay layers for ``/etc``, ``/opt``,
``/var``, ``/run`` and ``/usr/local``. :meth:`HostRoot.boot` mounts them over
the real directories in a mount namespace of the host's own (held by a
sleeping process), and every command "on the host" runs in it as root, so
``make install`` writes the real paths (/opt/mabeam, /etc/mabeam,
/etc/systemd/system, the mabeam user in /etc/passwd) while the machine's own
files never change. Several hosts can stack on one shared
*image* layer (a venv built once) and each keep their own upper layer.

:meth:`HostRoot.service_argv` reads an installed unit and builds the command
that starts its ``ExecStart`` as systemd would, systemd not being PID 1 here:
the unit's user and group (``setpriv``, no new privileges, no capabilities),
``UMask=``, ``LimitNOFILE=``, ``RuntimeDirectory=``/``StateDirectory=``
created with their owner and mode, ``PrivateTmp=``, ``PrivateDevices=``,
``ProtectHome=`` and ``ProtectSystem=strict`` as mounts, the seccomp switches
(``SystemCallFilter=``, ``MemoryDenyWriteExecute=``, ``RestrictAddressFamilies=``)
through :mod:`mabeam.dev.sandbox`, a clean environment
with the variables systemd sets (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
``WATCHDOG_PID``, ``RUNTIME_DIRECTORY``, ``STATE_DIRECTORY``,
``JOURNAL_STREAM``, ...) and the unit's ``Environment=``. The command execs
down to the daemon, so the process started is the service's main process.

Needs root, ``unshare``, ``nsenter``, ``setpriv`` and overlayfs (util-linux and Linux here).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

from mabeam.dev.notify import Notification, NotifySocket
from mabeam.dev.sandbox import spec_for
from mabeam.dev.units import ExecSpec, exec_spec, read_unit

#: The directories an install writes, overlaid per host.
OVERLAID = ("/etc", "/opt", "/var", "/run", "/usr/local")
#: Where the control directory given to :meth:`HostRoot.service_argv` appears for the service.
CONTROL_MOUNT = "/run/systemd/test"
#: The Python that runs :mod:`mabeam.dev.sandbox` on a host (the installed venv: the dev one may live under /root).
SANDBOX_PYTHON = "/opt/mabeam/bin/python"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def missing_tools() -> list[str]:
    """What this machine lacks to run host roots (empty when all is there)."""
    problems = [f"{tool} not found" for tool in ("unshare", "nsenter", "setpriv", "mount") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        problems.append("not root (mount namespaces and overlays need it)")
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            problems.append("no overlayfs")
    except OSError:
        problems.append("no /proc/filesystems")
    return problems


class HostRoot:
    """The overlay layers of one test host under `base`/`name`, on top of optional shared `image` layers."""

    def __init__(self, base: str | os.PathLike[str], name: str, image: HostRoot | None = None) -> None:
        self.name = name
        self.dir = Path(base) / name
        self.image = image
        self._holder: subprocess.Popen[str] | None = None
        for directory in OVERLAID:
            self.upper(directory).mkdir(parents=True, exist_ok=True)
            self._work(directory).mkdir(parents=True, exist_ok=True)

    def upper(self, path: str) -> Path:
        """Where `path` (absolute, under one of :data:`OVERLAID`) lives in this host's own layer."""
        top = next((d for d in OVERLAID if path == d or path.startswith(d + "/")), None)
        if top is None:
            raise ValueError(f"{path} is not under {', '.join(OVERLAID)}")
        return self.dir / "layers" / top.strip("/").replace("/", "-") / path[len(top):].lstrip("/")

    def _work(self, directory: str) -> Path:
        return self.dir / "work" / directory.strip("/").replace("/", "-")

    def file(self, path: str) -> Path:
        """The file `path` as the host sees it: this layer, else the image's, else the machine's."""
        for root in (self, self.image):
            if root is not None and root.upper(path).exists():
                return root.upper(path)
        return Path(path)

    def mounts(self) -> str:
        """Shell lines that mount this host's overlays (in a fresh, private mount namespace)."""
        lines = ["mount --make-rprivate /"]
        for directory in OVERLAID:
            lower = directory if self.image is None else f"{self.image.upper(directory)}:{directory}"
            options = f"lowerdir={lower},upperdir={self.upper(directory)},workdir={self._work(directory)}"
            lines.append(f"mount -t overlay overlay -o {shlex.quote(options)} {directory}")
        return "\n".join(lines) + "\n"

    def boot(self) -> HostRoot:
        """Mount the host's filesystem: a holder process keeps the mount namespace every command enters.

        One namespace per host, as on a real machine: a socket meshd creates in /run is
        the one agentd connects to.
        """
        if self._holder is not None:
            return self
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec",
             self.mounts() + "echo mounted\nexec sleep infinity\n"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "mounted":
            error = self._holder.communicate()[1] if self._holder.wait() is not None else ""
            self._holder = None
            raise RuntimeError(f"cannot mount the layers of {self.name}: {error}")
        return self

    def close(self) -> None:
        """Unmount (end the holder; the namespace goes with the last process in it)."""
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()
            self._holder = None

    def __enter__(self) -> HostRoot:
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def argv(self, script: str, netns: str | None = None, private: bool = False) -> list[str]:
        """argv that runs the shell `script` on this host (in network namespace `netns` when given).

        `private` gives the script a mount namespace of its own on top of the host's (for a
        service's sandbox mounts). The command execs all the way down, so its pid is the script's.
        """
        if self._holder is None:
            raise RuntimeError(f"host {self.name} is not booted")
        enter = ["nsenter", f"--mount=/proc/{self._holder.pid}/ns/mnt"]
        if netns:
            enter.append(f"--net=/run/netns/{netns}")
        unshare = ["unshare", "--mount", "--propagation", "private"] if private else []
        return [*enter, "--", *unshare, "sh", "-ec", script]

    def argv_file(self, script: Path, netns: str | None = None) -> list[str]:
        """argv that runs the shell script file `script` on this host in a mount namespace of its own."""
        argv = self.argv("", netns, private=True)
        return [*argv[:-2], "-e", str(script)]

    def run(self, script: str, netns: str | None = None, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
        """Run `script` on this host and wait; RuntimeError with its output if it fails."""
        result = subprocess.run(self.argv(script, netns), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"on {self.name}: exit {result.returncode}\n{script}\n--- output\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def unit(self, name: str) -> ExecSpec:
        """The installed unit `name` (from /etc/systemd/system on this host, with its drop-ins) as an ExecSpec."""
        return exec_spec(read_unit(self.file(f"/etc/systemd/system/{name}")))

    def drop_in(self, unit: str, name: str, text: str) -> None:
        """Write a drop-in ``/etc/systemd/system/<unit>.d/<name>.conf`` on this host (what ``systemctl edit`` does)."""
        directory = f"/etc/systemd/system/{unit}.d"
        self.run(f"mkdir -p {directory} && printf %s {shlex.quote(text)} > {directory}/{name}.conf")

    def service_argv(self, unit: str, control_dir: str | os.PathLike[str], netns: str | None = None,
                     journal_stream: str = "", extra_env: dict[str, str] | None = None,
                     seccomp: bool = True) -> list[str]:
        """argv that starts `unit`'s ExecStart on this host as systemd would; its process becomes the daemon.

        `control_dir` (a directory of the test's, mode 0755) is mounted at :data:`CONTROL_MOUNT`
        for the service: ``NOTIFY_SOCKET`` points at ``<unit>.sock`` in it (bind
        :func:`service_notify_socket` there), and the start script (``<unit>.start.sh``) and
        seccomp switches (``<unit>.seccomp.json``) are written there. `journal_stream`
        (``dev:ino`` of the file the test gives as stderr) becomes ``JOURNAL_STREAM``;
        `extra_env` is added for test switches; `seccomp` applies the unit's
        ``SystemCallFilter=``, ``MemoryDenyWriteExecute=`` and ``RestrictAddressFamilies=``
        (:mod:`mabeam.dev.sandbox`, between the privilege drop and the daemon, as systemd does).
        """
        spec = self.unit(unit)
        control = Path(control_dir)
        wrapper = None
        if seccomp and (spec.system_call_filter or spec.memory_deny_write_execute or spec.address_families):
            switches = spec_for(spec.system_call_filter, spec.system_call_error, spec.address_families,
                                spec.memory_deny_write_execute)
            (control / f"{unit}.seccomp.json").write_text(json.dumps(switches))
            (control / f"{unit}.seccomp.json").chmod(0o644)
            wrapper = [SANDBOX_PYTHON, "-m", "mabeam.dev.sandbox", "--spec-file",
                       f"{CONTROL_MOUNT}/{unit}.seccomp.json", "--"]
        script = control / f"{unit}.start.sh"
        script.write_text(service_script(spec, control, journal_stream, extra_env, wrapper))
        # sh reads the script through the descriptor it opened, also once /tmp is private.
        return self.argv_file(script, netns)


def service_notify_socket(control_dir: str | os.PathLike[str], unit: str) -> Path:
    """Where the test binds the notify socket of `unit`, given `control_dir` to :meth:`HostRoot.service_argv`."""
    return Path(control_dir) / f"{unit}.sock"


class Service:
    """One unit's main process on a host, with its fake notify socket and its journal-stream log file."""

    def __init__(self, host: HostRoot, unit: str, netns: str | None, run_dir: str | os.PathLike[str],
                 seccomp: bool = True) -> None:
        self.host = host
        self.unit = unit
        control = Path(run_dir) / f"{host.name}-control"
        control.mkdir(parents=True, exist_ok=True)
        control.chmod(0o755)  # the daemon's user reaches its socket and seccomp switches through it
        self.notify = NotifySocket(service_notify_socket(control, unit))
        self.log_path = Path(run_dir) / f"{host.name}-{unit}.log"
        with self.log_path.open("ab") as log:
            stat = os.fstat(log.fileno())
            self.argv = host.service_argv(unit, control, netns,
                                          journal_stream=f"{stat.st_dev}:{stat.st_ino}", seccomp=seccomp)
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        """The service's main pid (the daemon: the launch command execs down to it)."""
        return self.proc.pid

    def uid(self) -> int:
        """The real uid the main process runs as."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
        raise RuntimeError(f"no Uid line for {self.pid}")

    def log(self) -> str:
        """Everything the service wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace")

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60.0, after: float = 0.0) -> Notification:
        """Like NotifySocket.wait_for, failing at once (with the log) if the process exits first."""
        try:
            return self.notify.wait_for(key, value, timeout, after, alive=lambda: self.proc.poll() is None)
        except TimeoutError as error:
            raise TimeoutError(f"{self.host.name} {self.unit}: {error}\n--- log\n{self.log()[-3000:]}") from None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the units' KillSignal), then SIGKILL after `timeout`; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def close(self) -> None:
        """Stop the process and the notify socket."""
        self.stop()
        self.notify.close()


def service_script(spec: ExecSpec, control_dir: str | os.PathLike[str] | None = None, journal_stream: str = "",
                   extra_env: dict[str, str] | None = None, wrapper: list[str] | None = None) -> str:
    """The shell that turns a root shell in the host's mount namespace into the unit's main process."""
    q = shlex.quote
    lines = []
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "INVOCATION_ID": uuid.uuid4().hex}
    if spec.user != "root":
        env.update({"USER": spec.user, "LOGNAME": spec.user, "SHELL": "/usr/sbin/nologin"})
    if control_dir is not None:
        lines.append(f"mkdir -p {CONTROL_MOUNT} && mount --bind {q(str(control_dir))} {CONTROL_MOUNT}")
    if control_dir is not None and spec.type == "notify":
        env["NOTIFY_SOCKET"] = f"{CONTROL_MOUNT}/{spec.unit}.sock"
        if spec.watchdog_sec:
            env["WATCHDOG_USEC"] = str(int(spec.watchdog_sec * 1_000_000))
    if journal_stream:
        env["JOURNAL_STREAM"] = journal_stream
    for variable, directories in (("RUNTIME_DIRECTORY", spec.runtime_directories),
                                  ("STATE_DIRECTORY", spec.state_directories)):
        for path, mode in directories:
            lines.append(f"mkdir -p {q(path)} && chown {q(spec.user)}:{q(spec.group)} {q(path)} "
                         f"&& chmod {mode:o} {q(path)}")
        if directories:
            env[variable] = ":".join(path for path, _ in directories)
    if spec.private_tmp:
        lines += ["mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp",
                  "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /var/tmp"]
    if spec.private_devices:  # a /dev with only the pseudo devices, as systemd builds it
        lines += ["dev=/run/systemd/private-dev", "mkdir -p $dev", "mount -t tmpfs -o mode=755,nosuid tmpfs $dev"]
        lines += [f"touch $dev/{name} && mount --bind /dev/{name} $dev/{name}" for name in DEVICES]
        lines += ["mkdir $dev/shm $dev/pts", "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $dev/shm",
                  "mount --bind /dev/pts $dev/pts", "ln -s pts/ptmx $dev/ptmx", "mount --move $dev /dev"]
    if spec.protect_home:
        lines.append("for h in /home /root /run/user; do "
                     "if [ -d $h ]; then mount -t tmpfs -o ro,mode=755 tmpfs $h; fi; done")
    if spec.protect_system == "strict":  # everything read-only but the unit's own directories
        writable = [path for path, _ in spec.runtime_directories + spec.state_directories] + spec.read_write_paths
        if control_dir is not None:
            writable.append(CONTROL_MOUNT)
        lines += [f"mount --bind {q(path)} {q(path)}" for path in writable]
        lines += [f"mount -o remount,bind,ro {d}" for d in ("/", *OVERLAID)]
        lines += [f"mount -o remount,bind,rw {q(path)}" for path in writable]
    if spec.limit_nofile:  # as high as the unit asks, or the hard limit where the test machine caps it
        lines.append(f"ulimit -n {spec.limit_nofile} 2>/dev/null || ulimit -n $(ulimit -Hn)")
    lines.append(f"umask {spec.umask:04o}")
    env.update(spec.environment)
    env.update(extra_env or {})
    privileges = []
    if spec.user != "root":
        privileges = ["setpriv", f"--reuid={spec.user}", f"--regid={spec.group}", "--init-groups"]
        if spec.no_new_privileges:
            privileges.append("--no-new-privs")
        if spec.drop_capabilities:
            privileges += ["--inh-caps=-all", "--bounding-set=-all"]
        privileges.append("--")
    assignments = " ".join(f"{k}={q(v)}" for k, v in env.items())
    if spec.watchdog_sec and "WATCHDOG_USEC" in env:
        assignments += " WATCHDOG_PID=$$"  # this shell's pid: it execs down to the daemon
    command = " ".join(q(word) for word in [*privileges, *(wrapper or [])])
    lines.append(f"exec {command} env -i {assignments} {' '.join(q(word) for word in spec.argv)}")
    return "\n".join(lines) + "\n"


def make_image(base: str | os.PathLike[str], source: str | os.PathLike[str], python: str = "python3",
               etcd_binary: str | None = None) -> HostRoot:
    """A shared image layer: the venv at /opt/mabeam built by deploy/install.py, and etcd at /usr/local/bin."""
    script = f"{shlex.quote(python)} -c {shlex.quote(_VENV_ONLY)} {shlex.quote(str(Path(source).resolve()))}\n"
    if etcd_binary:
        script += f"install -m 0755 {shlex.quote(etcd_binary)} /usr/local/bin/etcd\n"
    with HostRoot(base, "image") as image:  # unmounted before hosts stack on it
        image.run(script, timeout=900)
    return image


# Only step 1 of deploy/install.py (the venv), run with the installer's own code.
_VENV_ONLY = """
import sys, importlib.util
from pathlib import Path
spec = importlib.util.spec_from_file_location("install", Path(sys.argv[1]) / "deploy" / "install.py")
install = importlib.util.module_from_spec(spec); spec.loader.exec_module(install)
install.install_venv(Path(install.DEFAULT_PREFIX), sys.executable)
"""
