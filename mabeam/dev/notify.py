"""A fake systemd notify socket for tests: bind it, hand its path to a daemon as ``$NOTIFY_SOCKET``.

It records every datagram with its arrival time and the sender's pid (from
``SCM_CREDENTIALS``, as systemd reads it for ``NotifyAccess=main``), so a test
can check what arrived, from which process, and when.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Notification:
    """One datagram: its ``KEY=VALUE`` fields, the sender's pid and the monotonic arrival time."""

    fields: dict[str, str]
    pid: int
    at: float = field(default_factory=time.monotonic)


class NotifySocket:
    """A datagram socket at `path` that collects notifications on a thread until :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self.messages: list[Notification] = []
        self._changed = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o666)  # daemons run as an unprivileged user
        self._sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._read, name=f"notify {Path(self.path).name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        space = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._closed:
            try:
                data, ancillary, _, _ = self._sock.recvmsg(4096, space)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            fields = dict(line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line)
            with self._changed:
                self.messages.append(Notification(fields, pid))
                self._changed.notify_all()

    def with_field(self, key: str, value: str | None = None) -> list[Notification]:
        """The notifications carrying `key` (with `value`, when given), in arrival order."""
        with self._changed:
            return [m for m in self.messages if key in m.fields and (value is None or m.fields[key] == value)]

    def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0, after: float = 0.0,
                 alive: Callable[[], bool] | None = None) -> Notification:
        """The first notification with `key` (= `value`) that arrived after monotonic time `after`.

        TimeoutError after `timeout`, or as soon as `alive()` (the sender is running) turns false.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    if message.at > after and key in message.fields and (value is None or message.fields[key] == value):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or (alive is not None and not alive()):
                    seen = [m.fields for m in self.messages][-5:]
                    why = f"within {timeout}s" if left <= 0 else "before the sender exited"
                    raise TimeoutError(f"no {key}={value or '*'} on {self.path} {why} (last: {seen})")
                self._changed.wait(min(left, 0.2) if alive is not None else left)

    def close(self) -> None:
        """Stop reading and remove the socket file."""
        self._closed = True
        self._sock.close()
        self._thread.join(2)
        Path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watchdog_gap_while_blocked(notify: NotifySocket, block: Callable[[], None], block_s: float,
                               timeout: float = 60.0) -> float:
    """Call `block` (which blocks the daemon's loop for `block_s`), wait for pings to resume; the longest gap.

    The gap between the last WATCHDOG=1 before the block and the first after it is at
    least the time the loop was blocked, whatever the machine's load.
    """
    blocked_at = time.monotonic()
    before = notify.with_field("WATCHDOG", "1")
    block()
    resumed = notify.wait_for("WATCHDOG", "1", after=blocked_at + block_s, timeout=timeout)
    pings = [m.at for m in notify.with_field("WATCHDOG", "1") if m.at <= resumed.at]
    start = before[-1].at if before else blocked_at
    window = [at for at in pings if at >= start]
    return max(b - a for a, b in zip(window, window[1:], strict=False))
