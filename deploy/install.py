#!/usr/bin/env python3
"""Install mabeam on this host as systemd services (``make install``; see deploy/README.md).

Standard library only, so it runs before any venv exists. In order, each step
safe to repeat (an upgrade is the same command from a newer checkout):

1. a venv at PREFIX (default /opt/mabeam) with this checkout installed into it
   (``pip install --upgrade``; an existing venv is reused);
2. the units (meshd, agentd, coordinator, mabeam.target) into /etc/systemd/system,
   with ``/opt/mabeam`` rewritten to PREFIX (always replaced: local changes
   belong in drop-ins, ``systemctl edit``);
3. sysusers.d and tmpfiles.d entries into /etc, applied at once (the ``mabeam``
   user; /var/lib/mabeam, /run/mabeam, /etc/mabeam);
4. the production configs into /etc/mabeam with this host's values (node id,
   data-plane address, etcd endpoints, cluster; gRPC on loopback, or on the
   host's address with ``--grpc network``), and a drop-in per unit allowing IP
   traffic with the cluster network (``--network``). An existing config or
   drop-in is never overwritten: the new rendering goes beside it as
   ``<name>.dist``. The configs turn tokens and mTLS on ([security]): ``--pki``
   copies the CA certificate and this host's certificate and key (made by
   ``mabeam certs``) into /etc/mabeam/tls, ``--token-key`` the public keys
   that verify tokens into /etc/mabeam/token-keys;
5. this README into PREFIX/share/doc/mabeam; ``systemd-analyze verify`` of the
   installed units when the tool exists; ``systemctl daemon-reload`` when
   systemd runs.

Nothing is started: ``systemctl enable --now mabeam.target`` does that.

``--etcd-member`` (``make install-etcd``) instead installs one member of the
etcd cluster: the ``mabeam-etcd`` user and unit and /etc/mabeam/etcd.conf.yml for
this host, around an etcd binary already at /usr/local/bin/etcd.
"""

from __future__ import annotations

import argparse
import grp
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
SOURCE = DEPLOY.parent
DEFAULT_PREFIX = "/opt/mabeam"
UNITS = ("meshd.service", "agentd.service", "coordinator.service", "mabeam.target")
DAEMONS = ("meshd", "agentd", "coordinator")
CONFIG_DIR = Path("/etc/mabeam")
TLS_DIR = CONFIG_DIR / "tls"
TOKEN_KEYS_DIR = CONFIG_DIR / "token-keys"
UNIT_DIR = Path("/etc/systemd/system")


class InstallError(Exception):
    """A step failed; the message says which and why."""


def run(argv: list[str], what: str) -> None:
    """Run a command, echoing it; InstallError with its output if it fails."""
    print(f"+ {' '.join(argv)}", flush=True)
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise InstallError(f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")


def render_config(template: str, values: dict[str, object]) -> str:
    """`template` with each top-level or table key in `values` set (``key = <TOML value>``), checked by parsing."""
    text = template
    for key, value in values.items():
        literal = "[" + ", ".join(f'"{v}"' for v in value) + "]" if isinstance(value, list) else f'"{value}"'
        text, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {literal}", text)
        if count == 0:
            raise InstallError(f"the config template has no '{key} =' line")
    import tomllib  # here, so that an old Python gets main()'s message rather than an ImportError

    tomllib.loads(text)  # a broken rendering must never reach /etc
    return text


def host_values(daemon: str, args: argparse.Namespace) -> dict[str, object]:
    """The host-specific keys of one daemon's config."""
    values: dict[str, object] = {"node_id": args.node_id, "cluster": args.cluster, "etcd": args.etcd,
                                 "tls_cert": f"{TLS_DIR}/{args.node_id}.crt", "tls_key": f"{TLS_DIR}/{args.node_id}.key"}
    if daemon == "meshd":
        values["bind_host"] = args.address
    if args.grpc == "network":  # reachable from the cluster network; the drop-in keeps everyone else out
        if daemon == "agentd":
            values["grpc_address"] = f"{args.address}:7300"
            values["metrics_address"] = f"{args.address}:9300"
            values["http_address"] = f"{args.address}:7380"
        else:
            values["grpc_host"] = args.address
            values["advertise_host"] = args.address
    return values


def network_dropin(network: list[str]) -> str:
    """The drop-in that lets a unit exchange IP traffic with the cluster network (the units deny the rest)."""
    return ("# Written by `make install` (deploy/README.md): IP traffic with this host (the unit's\n"
            "# IPAddressAllow=localhost) and the cluster network only.\n"
            f"[Service]\nIPAddressAllow={' '.join(network)}\n")


def install_network_dropin(unit: str, args: argparse.Namespace) -> None:
    """``<unit>.d/50-network.conf``, unless one exists (then ``.dist`` beside it when --network was given)."""
    target = UNIT_DIR / f"{unit}.d" / "50-network.conf"
    if target.exists() and not args.network:
        return
    if not args.network:
        raise InstallError(f"{target} does not exist yet: give --network (NETWORK=), the cluster's CIDR")
    target.parent.mkdir(parents=True, exist_ok=True)
    destination = target.with_suffix(".conf.dist") if target.exists() else target
    destination.write_text(network_dropin(args.network))
    destination.chmod(0o644)
    print(f"  unit   {destination}")


#: What the units hide from the daemons (ProtectHome=yes): a venv's Python must not live there.
HIDDEN = ("/home", "/root", "/run/user")


def install_venv(prefix: Path, python: str) -> None:
    """Create the venv (once) and install this checkout into it (every time: that is the upgrade)."""
    interpreter = Path(python).resolve()
    if any(str(interpreter).startswith(hidden + "/") for hidden in HIDDEN):
        raise InstallError(f"{python} is {interpreter}, under a home directory the units hide from the daemons "
                           "(ProtectHome=yes); use the system Python: make install PY=/usr/bin/python3")
    if not (prefix / "bin" / "python").exists():
        run([python, "-m", "venv", str(prefix)], "creating the venv")
    run([str(prefix / "bin" / "pip"), "install", "--quiet", "--upgrade", str(SOURCE)], "installing mabeam")
    for daemon in DAEMONS:
        if not os.access(prefix / "bin" / daemon, os.X_OK):
            raise InstallError(f"{prefix}/bin/{daemon} is missing after pip install")


def install_units(prefix: Path) -> list[Path]:
    """Write the units with PREFIX in their paths; returns where they went."""
    UNIT_DIR.mkdir(parents=True, exist_ok=True)
    placed = []
    for name in UNITS:
        text = (DEPLOY / name).read_text().replace(DEFAULT_PREFIX, str(prefix))
        target = UNIT_DIR / name
        target.write_text(text)
        target.chmod(0o644)
        placed.append(target)
        print(f"  unit   {target}")
    return placed


def install_system_entries() -> None:
    """sysusers.d and tmpfiles.d entries, applied now (systemd also applies them at boot)."""
    for kind in ("sysusers.d", "tmpfiles.d"):
        target = Path("/etc") / kind / "mabeam.conf"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEPLOY / kind / "mabeam.conf", target)
        target.chmod(0o644)
        print(f"  {kind:9s}{target}")
    run(["systemd-sysusers", "/etc/sysusers.d/mabeam.conf"], "creating the mabeam user")
    run(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/mabeam.conf"], "creating the mabeam directories")


def install_configs(args: argparse.Namespace) -> None:
    """Render each production config for this host; never overwrite an existing one."""
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    gid = grp.getgrnam("mabeam").gr_gid
    for daemon in DAEMONS:
        install_network_dropin(f"{daemon}.service", args)
        target = CONFIG_DIR / f"{daemon}.toml"
        exists = target.exists()
        if not exists:
            missing = [flag for flag, value in (("--etcd (ETCD=)", args.etcd), ("--address (ADDRESS=)", args.address))
                       if not value]
            if missing:
                raise InstallError(f"{target} does not exist yet: give {' and '.join(missing)}")
        elif not args.etcd or not args.address:
            print(f"  config {target} kept (exists)")
            continue
        text = render_config((DEPLOY / f"{daemon}.production.toml").read_text(), host_values(daemon, args))
        destination = target.with_suffix(".toml.dist") if exists else target
        destination.write_text(text)
        os.chown(destination, 0, gid)
        destination.chmod(0o640)
        print(f"  config {destination}" + (" (the existing config is kept; compare them)" if exists else ""))


def install_security(args: argparse.Namespace) -> list[str]:
    """The files [security] names: CA and host certificate + key (``--pki``), token keys (``--token-key``).

    Returns what is still missing (the daemons refuse to start without it, naming the file).
    """
    gid = grp.getgrnam("mabeam").gr_gid
    for directory, mode in ((TLS_DIR, 0o750), (TOKEN_KEYS_DIR, 0o755)):
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, 0, gid)
        directory.chmod(mode)
    if args.pki:
        pki = Path(args.pki)
        # Never ca.key: a host that holds it could sign any certificate.
        for name, mode in (("ca.crt", 0o644), (f"{args.node_id}.crt", 0o644), (f"{args.node_id}.key", 0o640)):
            if not (pki / name).is_file():
                raise InstallError(f"--pki {pki}: no {name} there (make it with `mabeam certs --dir {pki} "
                                   f"--node {args.node_id}=<address>,127.0.0.1,localhost`, deploy/README.md)")
            target = TLS_DIR / name
            shutil.copyfile(pki / name, target)
            os.chown(target, 0, gid)
            target.chmod(mode)
            print(f"  tls    {target}")
    for key in args.token_key:
        source = Path(key)
        if source.suffix != ".pub" or not source.is_file():
            raise InstallError(f"--token-key {key}: give a public key file <kid>.pub (never the private .key)")
        target = TOKEN_KEYS_DIR / source.name
        shutil.copyfile(source, target)
        target.chmod(0o644)
        print(f"  key    {target}")
    missing = [str(TLS_DIR / name) for name in ("ca.crt", f"{args.node_id}.crt", f"{args.node_id}.key")
               if not (TLS_DIR / name).is_file()]
    if not any(TOKEN_KEYS_DIR.glob("*.pub")):
        missing.append(f"{TOKEN_KEYS_DIR}/<kid>.pub")
    return missing


def verify(units: list[Path]) -> None:
    """``systemd-analyze verify`` the installed units: a wrong path fails here, not at first start."""
    print(f"+ systemd-analyze verify {' '.join(map(str, units))}", flush=True)
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    problems = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or problems:
        raise InstallError(f"systemd-analyze verify reports problems in the installed units:\n{problems}")


def render_etcd_config(template: str, name: str, members: dict[str, str], token: str) -> str:
    """The etcd member config for `name` among `members` (name -> address), rendered line by line."""
    if name not in members:
        raise InstallError(f"--etcd-member {name!r} is not among --etcd-peers ({', '.join(members)})")
    address = members[name]
    values = {
        "name": name,
        "listen-client-urls": f"http://{address}:2379,http://127.0.0.1:2379",
        "advertise-client-urls": f"http://{address}:2379",
        "listen-peer-urls": f"https://{address}:2380",
        "initial-advertise-peer-urls": f"https://{address}:2380",
        "initial-cluster": ",".join(f"{n}=https://{a}:2380" for n, a in members.items()),
        "initial-cluster-token": token,
    }
    text = template
    for key, value in values.items():
        text, count = re.subn(rf"(?m)^{re.escape(key)}: .*$", f"{key}: {value}", text)
        if count != 1:
            raise InstallError(f"the etcd config template has no single '{key}:' line")
    return text


def install_etcd_member(args: argparse.Namespace) -> list[Path]:
    """The etcd member of this host: user, config (kept if present), unit."""
    binary = Path("/usr/local/bin/etcd")
    if not os.access(binary, os.X_OK):
        raise InstallError(f"{binary} is missing: install an etcd v3.5 release first (deploy/README.md)")
    members = {}
    for item in args.etcd_peers.split(","):
        member, _, address = item.strip().partition("=")
        if not member or not address:
            raise InstallError(f"--etcd-peers takes NAME=ADDRESS,...; got {item!r}")
        members[member] = address
    target = Path("/etc/sysusers.d/mabeam-etcd.conf")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEPLOY / "sysusers.d" / "mabeam-etcd.conf", target)
    run(["systemd-sysusers", str(target)], "creating the mabeam-etcd user")
    install_network_dropin("mabeam-etcd.service", args)
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    config = CONFIG_DIR / "etcd.conf.yml"
    text = render_etcd_config((DEPLOY / "etcd.production.yml").read_text(), args.etcd_member, members,
                              f"mabeam-{args.cluster}")
    destination = config.with_suffix(".yml.dist") if config.exists() else config
    destination.write_text(text)
    os.chown(destination, 0, grp.getgrnam("mabeam-etcd").gr_gid)
    destination.chmod(0o640)
    print(f"  config {destination}" + (" (the existing config is kept; compare them)" if config.exists() else ""))
    unit = UNIT_DIR / "mabeam-etcd.service"
    UNIT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEPLOY / "mabeam-etcd.service", unit)
    unit.chmod(0o644)
    print(f"  unit   {unit}")
    return [unit]


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and install; exit 1 with a message naming the failed step."""
    parser = argparse.ArgumentParser(prog="deploy/install.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="where the venv goes (default /opt/mabeam)")
    parser.add_argument("--node-id", default=socket.gethostname().split(".")[0],
                        help="this host's node id (default: the short host name)")
    parser.add_argument("--address", default="", help="this host's address peers reach (the data plane binds it)")
    parser.add_argument("--etcd", default="", help="etcd client endpoints HOST:PORT,HOST:PORT,...")
    parser.add_argument("--cluster", default="prod", help="cluster name (etcd key prefix; default prod)")
    parser.add_argument("--network", default="", help="the cluster network(s) the units may talk to: CIDR[,CIDR]")
    parser.add_argument("--grpc", choices=("loopback", "network"), default="loopback",
                        help="bind gRPC and /metrics on loopback (default) or on --address (cluster network only)")
    parser.add_argument("--pki", default="", help="directory made by `mabeam certs`: its ca.crt and <node id>.crt/.key "
                                                  "go to /etc/mabeam/tls")
    parser.add_argument("--token-key", default="", help="public key file(s) <kid>.pub that verify tokens: FILE[,FILE]")
    parser.add_argument("--python", default=sys.executable, help="the Python (>= 3.11) that creates the venv")
    parser.add_argument("--skip-venv", action="store_true", help="only place units and configs (venv exists)")
    parser.add_argument("--etcd-member", default="", help="install this host's etcd member NAME instead")
    parser.add_argument("--etcd-peers", default="", help="with --etcd-member: NAME=ADDRESS,... of every member")
    args = parser.parse_args(argv)
    if sys.version_info < (3, 11):  # noqa: UP036 - this script runs on whatever python3 the host has
        print("deploy/install.py: needs Python 3.11 or newer (make install PY=/usr/bin/python3.11)", file=sys.stderr)
        return 1
    args.etcd = [e.strip() for e in args.etcd.split(",") if e.strip()]
    args.network = [n.strip() for n in args.network.split(",") if n.strip()]
    args.token_key = [k.strip() for k in args.token_key.split(",") if k.strip()]
    if args.grpc == "network" and not (args.network and args.address):
        print("deploy/install.py: --grpc network needs --address and --network (the allow-list that keeps\n"
              "  everything outside the cluster network away from the gRPC port)", file=sys.stderr)
        return 1
    prefix = Path(args.prefix)
    if os.geteuid() != 0:
        print("deploy/install.py: run as root (it writes /etc and creates the mabeam user)", file=sys.stderr)
        return 1
    missing: list[str] = []
    try:
        if args.etcd_member:
            units = install_etcd_member(args)
        else:
            if not args.skip_venv:
                install_venv(prefix, args.python)
            units = install_units(prefix)
            install_system_entries()
            install_configs(args)
            missing = install_security(args)
            doc = prefix / "share" / "doc" / "mabeam"
            doc.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DEPLOY / "README.md", doc / "README.md")
        if shutil.which("systemd-analyze"):
            verify(units)
        if Path("/run/systemd/system").is_dir():
            run(["systemctl", "daemon-reload"], "reloading systemd")
    except InstallError as error:
        print(f"deploy/install.py: {error}", file=sys.stderr)
        return 1
    service = "mabeam-etcd.service" if args.etcd_member else "mabeam.target"
    if not args.etcd_member and missing:
        print("installed, but the daemons will not start without (PKI=, TOKEN_KEY=; deploy/README.md):\n  "
              + "\n  ".join(missing))
        return 0
    print(f"installed. Next: systemctl enable --now {service}   (deploy/README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
