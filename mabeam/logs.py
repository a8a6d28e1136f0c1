"""Log lines journald (and a person) can read: one line per event, level, daemon, node, key fields, no secrets.

Every daemon calls :func:`setup` once at start::

    logs.setup("meshd", node=config.node_id, level="INFO")
    log.info("joined the cluster", extra={"fields": {"members": 3, "lease": "7587…"}})

A line looks like ``level=info daemon=meshd node=host-a logger=meshd.node
msg="joined the cluster" members=3`` (logfmt). When stderr is connected to the
journal (systemd sets ``$JOURNAL_STREAM`` to its device and inode), the line
starts with a syslog priority prefix (``<6>`` for info) that journald turns into
the entry's PRIORITY, and carries no timestamp (journald adds one); otherwise
it starts with an ISO-8601 UTC timestamp. A traceback stays on the same line
(``exc="Traceback…\\n…"``), since journald makes one entry per line.

Secrets never reach a line: values of fields whose name looks secret
(``secret``, ``password``, ``token``, ``private``) are replaced by ``***``, and
any text registered with :func:`register_secret` (meshd's CURVE secret key) is
masked wherever it appears.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import TextIO

#: syslog priorities journald understands as a ``<N>`` prefix.
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
SECRET_NAME = re.compile(r"secret|password|passwd|token|private|credential", re.IGNORECASE)
MASK = "***"
_BARE = re.compile(r"^[A-Za-z0-9_.:/@+\-,]+$")
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask `value` in every later log line (ignored when shorter than 8 characters: too likely to collide)."""
    if len(value) >= 8:
        _secrets.add(value)


def mask(text: str) -> str:
    """`text` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def quote(value: object) -> str:
    """A logfmt value: bare when safe, else double-quoted with backslash escapes (newlines as ``\\n``)."""
    text = mask(str(value))
    if text and _BARE.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def stderr_is_journal(stream: TextIO | None = None, env: Mapping[str, str] | None = None) -> bool:
    """True when `stream` (stderr) is the journal stream systemd connected (``$JOURNAL_STREAM`` = ``dev:ino``)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        stat = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{stat.st_dev}:{stat.st_ino}"


class LineFormatter(logging.Formatter):
    """logfmt lines with daemon and node, optional ``<N>`` priority prefix, secrets masked."""

    def __init__(self, daemon: str, node: str = "", journal: bool = False,
                 fields: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.daemon = daemon
        self.node = node
        self.journal = journal
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        """One line for one record."""
        parts = []
        if self.journal:
            parts.append(f"<{PRIORITY.get(record.levelno, 6)}>level={record.levelname.lower()}")
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            parts.append(f"{stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()}")
        parts.append(f"daemon={quote(self.daemon)}")
        if self.node:
            parts.append(f"node={quote(self.node)}")
        for key, value in self.fields.items():
            parts.append(f"{key}={quote(value)}")
        parts.append(f"logger={quote(record.name)}")
        parts.append(f"msg={quote(record.getMessage())}")
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                name = re.sub(r"[^A-Za-z0-9_.]", "_", str(key)) or "_"
                parts.append(f"{name}={MASK if SECRET_NAME.search(name) else quote(value)}")
        if record.exc_info:
            parts.append(f"exc={quote(self.formatException(record.exc_info))}")
        elif record.stack_info:
            parts.append(f"stack={quote(record.stack_info)}")
        return " ".join(parts)


def setup(daemon: str, node: str = "", level: str | int = "INFO", stream: TextIO | None = None,
          journal: bool | None = None, fields: Mapping[str, object] | None = None) -> logging.Handler:
    """Route the root logger to `stream` (stderr) in this format; returns the handler (replaces earlier ones).

    `fields` are put on every line after the node (agentd's workers add ``worker=w0``).
    """
    stream = stream or sys.stderr
    if stream is sys.stderr and not faulthandler.is_enabled():
        # systemd's watchdog kills a hung daemon with SIGABRT: this prints every thread's Python
        # stack first, so the journal shows where the event loop was stuck.
        faulthandler.enable()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter(daemon, node, stderr_is_journal(stream) if journal is None else journal,
                                       fields))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
