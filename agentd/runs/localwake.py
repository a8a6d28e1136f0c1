"""Same-host wake-ups for the SQLite store: one datagram per commit to every agentd sharing the file.

Every agentd that shares a SQLite runs file is on the same host (that is what sharing the file means), so it
can hear the others' commits without a round trip through etcd: each binds a Unix datagram socket in a
directory beside the file (``<file>.wake/<node_id>.sock``, mode 0700: only the same user can send), and after
each local commit sends ``[run_id, seq]`` to every other socket there. A follower woken this way reads the log,
as for any other node's commit — a datagram carries no event, only "run R has events up to seq S".

Why, beside the etcd relay (:class:`agentd.runs.wake.EtcdRelay`): an etcd put is a raft commit with an fsync
before the watch fires (about 2-3 ms here, most of the cross-node delivery time in ``python -m bench runs``),
while a datagram is one system call. The etcd relay stays: it is the reliable path (a datagram to a full or
missing socket is dropped) and the one other hosts' agentd would hear. The follower dedups the two
announcements by seq (:meth:`agentd.runs.wake.Subscription.take`), so the later one costs no read.

A path the socket cannot have (over the 107 bytes of ``sun_path``), or a directory that cannot be made, only
turns this off (logged once): the etcd relay carries every wake-up then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
from pathlib import Path

from agentd.runs.wake import Wakeups

log = logging.getLogger("agentd.runs.localwake")

#: A datagram is ``["<run_id>", <seq>]``: run ids are at most 128 characters (validation.py), so this is ample.
MAX_DATAGRAM = 1024
#: How often the list of the other agentd's sockets is read again (a new node is heard through etcd meanwhile).
PEERS_EVERY_S = 1.0
_SUN_PATH_MAX = 107


def socket_name(node_id: str) -> str:
    """The file name of a node's socket: its id, with anything outside ``[A-Za-z0-9._-]`` replaced."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", node_id)[:64] + ".sock"


class LocalRelay:
    """Datagram wake-ups between the agentd of one host sharing a SQLite file (see the module docstring)."""

    def __init__(self, store_path: str, node_id: str, wakeups: Wakeups) -> None:
        self.directory = Path(f"{store_path}.wake")
        self.path = self.directory / socket_name(node_id)
        self.wakeups = wakeups
        self._sock: socket.socket | None = None
        self._peers: list[str] = []
        self._peers_at = 0.0
        #: Datagrams sent and received, and those ignored as malformed (for tests and metrics).
        self.sent = 0
        self.received = 0
        self.malformed = 0

    @property
    def active(self) -> bool:
        """True once bound (False when the socket could not be made: etcd carries the wake-ups then)."""
        return self._sock is not None

    def start(self) -> None:
        """Bind this node's socket and listen on the running loop (logs and stays off on failure)."""
        if len(str(self.path).encode()) > _SUN_PATH_MAX:
            log.warning("same-host wake-ups off: socket path %s is longer than %d bytes; etcd relays them",
                        self.path, _SUN_PATH_MAX)
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # left by a previous run of this node (a socket file outlives its process)
            sock.bind(str(self.path))
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            log.warning("same-host wake-ups off: cannot bind %s (%s); etcd relays them", self.path, error)
            return
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        """Stop listening and remove this node's socket file."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def published(self, run_id: str, seq: int) -> None:
        """A local commit: tell every other agentd of the host (best effort; etcd follows anyway)."""
        sock = self._sock
        if sock is None:
            return
        now = time.monotonic()
        if now - self._peers_at > PEERS_EVERY_S:
            self._peers_at = now
            try:
                self._peers = [str(p) for p in self.directory.glob("*.sock") if p != self.path]
            except OSError:
                self._peers = []
        datagram = json.dumps([run_id, seq], separators=(",", ":")).encode()
        for peer in self._peers:
            try:
                sock.sendto(datagram, peer)
                self.sent += 1
            except OSError:
                continue  # a busy, dead or gone peer: the etcd relay still reaches it

    def _readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.info("same-host wake-up socket: %s", error)
                return
            self.received += 1
            announced = _parse(data)
            if announced is None:
                self.malformed += 1
                continue
            self.wakeups.notify(*announced)


def _parse(data: bytes) -> tuple[str, int] | None:
    """``(run_id, seq)`` from a datagram, or None when it is not one of ours."""
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str) or not value[0]
            or not isinstance(value[1], int) or isinstance(value[1], bool) or value[1] < 1):
        return None
    return value[0], value[1]
