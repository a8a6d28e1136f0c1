"""Talk to systemd from a daemon: readiness, status, stopping and the watchdog (``sd_notify``).

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named in
``$NOTIFY_SOCKET`` (an abstract socket when the name starts with ``@``), so it is
spoken here directly instead of through a library: the ``sd_notify`` wrappers on
PyPI are unmaintained or link libsystemd for a dozen lines of socket code.
Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=`` is not ``notify``)
every call does nothing.

A daemon uses three hooks, so a shared bootstrap can fold them in::

    notifier = Notifier.from_env()            # reads and unsets NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID
    tg.create_task(notifier.run(status))      # WATCHDOG=1 at half of WatchdogSec, STATUS= when it changes
    notifier.ready(status())                  # READY=1 once the daemon serves
    notifier.stopping()                       # STOPPING=1 when shutdown begins

``run`` pings from the daemon's event loop, so a loop that is blocked stops the
pings and systemd kills and restarts the daemon after ``WatchdogSec``.

For tests only: with ``MABEAM_DEBUG_BLOCK_LOOP=SECONDS`` in the environment,
``run`` installs a SIGUSR2 handler that blocks the event loop for that long
(``time.sleep`` on the loop), so a test can prove the watchdog pings stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

log = logging.getLogger("mabeam.systemd")

#: Exit code of an invalid configuration: the units say ``RestartPreventExitStatus=2``, since a restart cannot fix it.
EXIT_CONFIG = 2
#: Exit code of a startup failure a retry may fix (etcd unreachable, a port still held): systemd restarts it.
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL
#: Environment variable that enables the debug loop-blocking signal (seconds to block).
DEBUG_BLOCK_ENV = "MABEAM_DEBUG_BLOCK_LOOP"
#: How often STATUS= is recomputed when there is no watchdog (seconds).
STATUS_INTERVAL = 5.0
#: Longest STATUS= text sent (systemctl shows one line; keep datagrams small).
MAX_STATUS = 400


def socket_address(name: str) -> str | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value; None if unsupported (e.g. ``vsock:``)."""
    if name.startswith("@"):
        return "\0" + name[1:]  # abstract namespace
    if name.startswith("/"):
        return name
    return None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``WATCHDOG_USEC``), or None when the watchdog is off for `pid`."""
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None  # the watchdog is meant for another process (we were forked or exec'd from it)
    return usec / 2 / 1_000_000


def clean_status(text: str) -> str:
    """A STATUS= value: one line, bounded."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_STATUS else line[: MAX_STATUS - 1] + "…"


class Notifier:
    """The daemon's side of ``sd_notify``; every method is a no-op when not under systemd."""

    def __init__(self, notify_socket: str = "", watchdog: float | None = None) -> None:
        self.address = socket_address(notify_socket) if notify_socket else None
        if notify_socket and self.address is None:
            log.warning("NOTIFY_SOCKET=%s is not a unix socket path; not notifying systemd", notify_socket)
        self.watchdog = watchdog if self.address is not None else None
        self.is_ready = False
        self._last_status = ""
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None, unset: bool = True) -> Notifier:
        """Read ``NOTIFY_SOCKET``/``WATCHDOG_USEC``/``WATCHDOG_PID``; by default unset them.

        Unsetting keeps child processes (agentd's workers) from talking to systemd as if they
        were the daemon.
        """
        environ = os.environ if env is None else env
        notifier = cls(environ.get("NOTIFY_SOCKET", ""), watchdog_interval(environ, os.getpid()))
        if unset:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """True when there is a systemd to talk to."""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; False if not sent (never raises, never blocks)."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.address)
        except OSError as error:
            log.debug("sd_notify %s failed: %s", fields[:1], error)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """``READY=1`` (with a STATUS= line): call once the daemon serves."""
        self.is_ready = True
        fields = ["READY=1"]
        if status:
            self._last_status = clean_status(status)
            fields.append(f"STATUS={self._last_status}")
        return self.notify(*fields)

    def status(self, status: str) -> bool:
        """``STATUS=`` for ``systemctl status``; sent only when the text changed."""
        line = clean_status(status)
        if line == self._last_status:
            return False
        self._last_status = line
        return self.notify(f"STATUS={line}")

    def stopping(self, status: str = "stopping") -> bool:
        """``STOPPING=1``: call when shutdown begins."""
        self._last_status = clean_status(status)
        return self.notify("STOPPING=1", f"STATUS={self._last_status}")

    def ping(self) -> bool:
        """One ``WATCHDOG=1``."""
        return self.notify("WATCHDOG=1")

    async def run(self, status: Callable[[], str] | None = None) -> None:
        """Until cancelled: WATCHDOG=1 every half WatchdogSec and STATUS= when `status()` changes, from this loop."""
        _install_debug_block()
        if self.address is None:
            return
        period = self.watchdog if self.watchdog is not None else STATUS_INTERVAL
        while True:
            if self.watchdog is not None:
                self.ping()
            if status is not None and self.is_ready:
                try:
                    self.status(status())
                except Exception:  # noqa: BLE001 - a status that cannot be computed must not stop the pings
                    log.exception("computing the systemd status failed")
            await asyncio.sleep(period)

    def close(self) -> None:
        """Close the socket (the object can still be used; it reopens)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _install_debug_block() -> None:
    raw = os.environ.get(DEBUG_BLOCK_ENV, "")
    if not raw:
        return
    seconds = float(raw)

    def block() -> None:
        log.warning("blocking the event loop for %.1f s (%s is set)", seconds, DEBUG_BLOCK_ENV)
        time.sleep(seconds)  # on purpose: this is the hang the watchdog must catch

    with contextlib.suppress(RuntimeError, ValueError):  # no running loop / not the main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, block)
