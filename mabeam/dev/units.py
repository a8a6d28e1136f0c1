"""Read a systemd unit file the way systemd does, for tests that start daemons exactly as the units say.

Parsing follows systemd.syntax(7) and systemd.service(5) for what our units use:
sections, ``Key=Value`` with repeated keys, ``#``/``;`` comments, backslash
line continuations, an empty assignment resetting a list, ``ExecStart=`` with
its prefixes, quoting, ``%`` specifiers and ``$VAR``/``${VAR}`` expansion, and
``Environment=`` assignments. Anything else a unit might use is kept as raw
text in :class:`Unit` and is simply not interpreted.

:func:`exec_spec` turns a parsed service into an :class:`ExecSpec`: the argv,
environment, user, directories and sandbox switches that
:mod:`mabeam.dev.hostroot` reproduces without systemd as PID 1.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


class UnitError(ValueError):
    """The unit uses something this reader does not handle; the message names it."""


@dataclass
class Unit:
    """A parsed unit: its name and, per section, the assignments in file order."""

    name: str
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def values(self, section: str, key: str) -> list[str]:
        """Every value of `key`, in order, an empty assignment clearing the ones before it."""
        result: list[str] = []
        for name, value in self.sections.get(section, []):
            if name == key:
                if value == "":
                    result.clear()
                else:
                    result.append(value)
        return result

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        """The last value of `key` ("" when the last assignment was empty), or `default` when never set."""
        assignments = [value for name, value in self.sections.get(section, []) if name == key]
        return assignments[-1] if assignments else default

    def boolean(self, section: str, key: str, default: bool = False) -> bool:
        """A systemd boolean (yes/true/on/1)."""
        value = self.get(section, key)
        if value is None:
            return default
        return value.strip().lower() in {"1", "yes", "true", "on"}


def parse_unit(text: str, name: str) -> Unit:
    """Parse unit file text (systemd.syntax(7))."""
    unit = Unit(name)
    section: str | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if pending and line and line[0] in "#;":
            continue  # comments inside a continued line are skipped
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.sections.setdefault(section, [])
            continue
        if section is None or "=" not in line:
            raise UnitError(f"{name}:{number}: expected [Section] or Key=Value, got {raw!r}")
        key, _, value = line.partition("=")
        unit.sections[section].append((key.strip(), value.strip()))
    return unit


def read_unit(path: str | Path) -> Unit:
    """Parse the unit file at `path` and its drop-ins (``<path>.d/*.conf``, in name order, applied after it)."""
    path = Path(path)
    unit = parse_unit(path.read_text(), path.name)
    dropins = path.parent / f"{path.name}.d"
    for conf in sorted(dropins.glob("*.conf")) if dropins.is_dir() else []:
        for section, assignments in parse_unit(conf.read_text(), conf.name).sections.items():
            unit.sections.setdefault(section, []).extend(assignments)
    return unit


def specifiers(unit: Unit) -> dict[str, str]:
    """The ``%`` specifiers a non-template system unit resolves (systemd.unit(5), "Specifiers")."""
    stem = unit.name.rsplit(".", 1)[0]
    return {"%": "%", "n": unit.name, "N": stem, "p": stem, "i": "", "I": "", "t": "/run", "S": "/var/lib",
            "C": "/var/cache", "L": "/var/log", "E": "/etc", "T": "/tmp", "V": "/var/tmp"}


def expand_specifiers(value: str, unit: Unit) -> str:
    """`value` with ``%x`` specifiers replaced; UnitError for one this reader does not know."""
    table = specifiers(unit)

    def one(match: re.Match[str]) -> str:
        letter = match.group(1)
        if letter not in table:
            raise UnitError(f"{unit.name}: specifier %{letter} is not supported here")
        return table[letter]

    return re.sub(r"%(.)", one, value)


def parse_environment(values: list[str], unit: Unit) -> dict[str, str]:
    """``Environment=`` values (each a list of possibly quoted ``KEY=VALUE`` words, specifiers expanded)."""
    env: dict[str, str] = {}
    for value in values:
        for word in shlex.split(expand_specifiers(value, unit)):
            key, sep, val = word.partition("=")
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise UnitError(f"Environment={value!r}: {word!r} is not KEY=VALUE")
            env[key] = val
    return env


def parse_command(value: str, unit: Unit, env: dict[str, str]) -> list[str]:
    """One ``ExecStart=`` value as argv: prefixes dropped, specifiers and variables expanded."""
    value = value.lstrip()
    while value and value[0] in "@-:+!":
        if value[0] in "@:+!":
            raise UnitError(f"{unit.name}: ExecStart prefix {value[0]!r} is not supported here")
        value = value[1:]
    argv: list[str] = []
    for word in shlex.split(expand_specifiers(value, unit)):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:  # $VAR alone: its value split into words
            argv.extend(env.get(whole.group(1), "").split())
            continue
        argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    if not argv or not argv[0].startswith("/"):
        raise UnitError(f"{unit.name}: ExecStart must start with an absolute path, got {argv[:1]}")
    return argv


def parse_seconds(value: str) -> float:
    """A systemd time span ("10s", "1min 30s", "500ms", "2") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "hr": 3600.0}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip())
    if not parts:
        raise UnitError(f"not a time span: {value!r}")
    for number, unit in parts:
        if unit not in units and unit != "":
            raise UnitError(f"unknown time unit {unit!r} in {value!r}")
        total += float(number) * units.get(unit, 1.0)
    return total


@dataclass
class ExecSpec:
    """What systemd would do to start a service's main process, for :mod:`mabeam.dev.hostroot`."""

    unit: str
    argv: list[str]
    environment: dict[str, str]
    user: str
    group: str
    umask: int
    type: str
    notify_access: str
    watchdog_sec: float
    runtime_directories: list[tuple[str, int]]
    state_directories: list[tuple[str, int]]
    read_write_paths: list[str]
    no_new_privileges: bool
    drop_capabilities: bool
    private_tmp: bool
    private_devices: bool
    protect_system: str
    protect_home: bool
    limit_nofile: int | None
    system_call_filter: list[str]
    system_call_error: str
    address_families: list[str]
    memory_deny_write_execute: bool
    kill_mode: str = "control-group"
    timeout_stop_sec: float = 90.0


def _directories(unit: Unit, key: str, base: str) -> list[tuple[str, int]]:
    mode = int(unit.get("Service", f"{key}Mode") or "0755", 8)
    return [(f"{base}/{name}", mode) for value in unit.values("Service", key) for name in value.split()]


def exec_spec(unit: Unit) -> ExecSpec:
    """The service's start, as data; UnitError when it needs something not handled here."""
    starts = unit.values("Service", "ExecStart")
    if len(starts) != 1:
        raise UnitError(f"{unit.name}: expected one ExecStart=, found {len(starts)}")
    env = parse_environment(unit.values("Service", "Environment"), unit)
    if unit.values("Service", "EnvironmentFile"):
        raise UnitError(f"{unit.name}: EnvironmentFile= is not supported here")
    user = unit.get("Service", "User") or "root"
    nofile = unit.get("Service", "LimitNOFILE")
    watchdog = unit.get("Service", "WatchdogSec")
    capabilities = unit.get("Service", "CapabilityBoundingSet")
    return ExecSpec(
        unit=unit.name,
        argv=parse_command(starts[0], unit, env),
        environment=env,
        user=user,
        group=unit.get("Service", "Group") or user,
        umask=int(unit.get("Service", "UMask") or "0022", 8),
        type=unit.get("Service", "Type") or "simple",
        notify_access=unit.get("Service", "NotifyAccess") or "none",
        watchdog_sec=parse_seconds(watchdog) if watchdog else 0.0,
        runtime_directories=_directories(unit, "RuntimeDirectory", "/run"),
        state_directories=_directories(unit, "StateDirectory", "/var/lib"),
        read_write_paths=[p for v in unit.values("Service", "ReadWritePaths") for p in v.split()],
        no_new_privileges=unit.boolean("Service", "NoNewPrivileges"),
        drop_capabilities=capabilities is not None and capabilities.strip() == "",
        private_tmp=unit.boolean("Service", "PrivateTmp"),
        private_devices=unit.boolean("Service", "PrivateDevices"),
        protect_system=(unit.get("Service", "ProtectSystem") or "no").lower(),
        protect_home=unit.boolean("Service", "ProtectHome"),
        limit_nofile=int(nofile) if nofile else None,
        system_call_filter=unit.values("Service", "SystemCallFilter"),
        system_call_error=unit.get("Service", "SystemCallErrorNumber") or "",
        address_families=[f for v in unit.values("Service", "RestrictAddressFamilies") for f in v.split()],
        memory_deny_write_execute=unit.boolean("Service", "MemoryDenyWriteExecute"),
        kill_mode=(unit.get("Service", "KillMode") or "control-group").lower(),
        timeout_stop_sec=parse_seconds(unit.get("Service", "TimeoutStopSec") or "90s"),
    )
