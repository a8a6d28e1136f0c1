"""Starting a daemon: the ready line it prints once it serves, and the error it stops with when it cannot.

**The ready line** is how a process tells whoever started it that it serves, and on which addresses.

Every mabeam process that listens (meshd, agentd, coordinator, and any server a
test or the dev cluster starts, e.g. agentd's HTTP face or the local model
server) prints exactly one line on stdout once it serves::

    <kind> ready {"node_id": "node-1", "pid": 4242, "grpc": "127.0.0.1:40123", ...}

``<kind>`` is the process kind (``meshd``, ``agentd``, ``coordinator``, ...),
then the word ``ready``, then one JSON object on the same line. The object
holds every address the process *actually bound* — a process given port 0
reports the port the OS chose — so a harness never needs to pick a "free"
port and hope nobody takes it before the child binds it (the race behind
"Address already in use" flakes). Conventions for the fields:

- a TCP address is ``"host:port"`` under a key named for what it serves
  (``grpc``, ``metrics``, ``http``); ZeroMQ addresses keep their URL form
  (``attach``: ``ipc://...``; ``data``: ``{"control": "tcp://...", ...}``);
- ``node_id`` and ``pid`` are always present; a field that is disabled is
  ``null``; new fields may be added at any time, so readers ignore unknown keys.

To add a server: bind port 0 (or the port you were given), then
``announce_ready("kind", http=f"{host}:{bound_port}", ...)``. Readers use
:func:`parse_ready_line` (``mabeam.dev.cluster`` does for every daemon).

**StartupError** is what a daemon raises when it cannot start (a port in use,
etcd unreachable, its node id already live); :func:`startup_exit` turns it
(also inside the ExceptionGroup a TaskGroup wraps it in) into one line per
problem on stderr and the daemon's exit code.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

READY_WORD = "ready"


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def startup_problems(error: BaseException) -> list[StartupError]:
    """The StartupErrors in ``error`` (itself, or nested in exception groups)."""
    if isinstance(error, StartupError):
        return [error]
    if isinstance(error, BaseExceptionGroup):
        return [found for sub in error.exceptions for found in startup_problems(sub)]
    return []


def startup_exit(kind: str, error: BaseException, exit_code: int = 2) -> int:
    """Print each startup problem in ``error`` as ``<kind>: <why>`` on stderr and return ``exit_code``.

    Daemons pass ``mabeam.systemd.EXIT_TEMPFAIL`` (a retry may pass: etcd unreachable, a port held), so
    systemd restarts them. Re-raises ``error`` when it holds no StartupError (a bug must not look like a
    startup problem).
    """
    problems = startup_problems(error)
    if not problems:
        raise error
    for problem in problems:
        print(f"{kind}: {problem}", file=sys.stderr)
    return exit_code


@dataclass(frozen=True)
class ReadyLine:
    """A parsed ready line: the process kind and its fields."""

    kind: str
    fields: dict[str, Any]


def ready_line(kind: str, **fields: Any) -> str:
    """The ready line for ``kind`` with ``fields`` (``pid`` is added); no trailing newline."""
    if not kind or " " in kind:
        raise ValueError(f"process kind must be one word, got {kind!r}")
    body = {"pid": os.getpid(), **fields}
    return f"{kind} {READY_WORD} {json.dumps(body, separators=(',', ':'), sort_keys=True)}"


def announce_ready(kind: str, **fields: Any) -> None:
    """Print the ready line on stdout and flush (the harness waits for it)."""
    print(ready_line(kind, **fields), file=sys.stdout, flush=True)


def parse_ready_line(line: str) -> ReadyLine | None:
    """The ready line's kind and fields, or None if ``line`` is not a ready line."""
    kind, sep, rest = line.strip().partition(f" {READY_WORD} ")
    if not sep or " " in kind or not rest.startswith("{"):
        return None
    try:
        fields = json.loads(rest)
    except ValueError:
        return None
    return ReadyLine(kind, fields) if isinstance(fields, dict) else None
