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

Datagrams go only where someone listens: each agentd tells the others which runs it follows (a stream or an
executor) — ``{"follow": [...]}`` when a run gets its first follower there, ``{"unfollow": [...]}`` when it
loses its last, and every :data:`REFRESH_S` the whole list, which a sender forgets after
:data:`INTEREST_TTL_S` without a refresh. So a commit wakes the agentd that serve or execute the run, not every
agentd of the host (on two cores a useless wake-up competes with the one that delivers). An interest that is
lost or not yet heard costs promptness only: etcd still wakes that follower.

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

#: A wake-up is ``["<run_id>", <seq>]``; an interest ``{"follow": [...]}`` or ``{"unfollow": [...]}``, cut to this.
MAX_DATAGRAM = 32 * 1024
#: How often an agentd sends the whole list of runs it follows; a sender forgets an interest not refreshed
#: within INTEREST_TTL_S.
REFRESH_S = 1.0
INTEREST_TTL_S = 3.5
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
        #: run id -> {peer socket path -> when its interest lapses (monotonic)}.
        self._interest: dict[str, dict[str, float]] = {}
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

    def _peer_list(self) -> list[str]:
        now = time.monotonic()
        if now - self._peers_at > PEERS_EVERY_S:
            self._peers_at = now
            try:
                self._peers = [str(p) for p in self.directory.glob("*.sock") if p != self.path]
            except OSError:
                self._peers = []
        return self._peers

    def _send(self, datagram: bytes, peer: str) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.sendto(datagram, peer)
        except OSError:
            return False  # a busy, dead or gone peer: the etcd relay still reaches it
        self.sent += 1
        return True

    def published(self, run_id: str, seq: int) -> None:
        """A local commit: tell the agentd of the host that follow the run (best effort; etcd follows anyway)."""
        peers = self._interest.get(run_id)
        if not peers or self._sock is None:
            return
        now = time.monotonic()
        datagram = json.dumps([run_id, seq], separators=(",", ":")).encode()
        for peer, lapses in list(peers.items()):
            if lapses < now or not self._send(datagram, peer):
                del peers[peer]
        if not peers:
            del self._interest[run_id]

    def following(self, run_id: str, on: bool) -> None:
        """This agentd's interest in ``run_id`` changed (Wakeups.on_follow): tell the others at once."""
        datagram = json.dumps({"follow" if on else "unfollow": [run_id]}, separators=(",", ":")).encode()
        for peer in self._peer_list():
            self._send(datagram, peer)

    async def run(self) -> None:
        """Send the whole list of followed runs every REFRESH_S (new and restarted agentd learn it) until cancelled."""
        while True:
            await asyncio.sleep(REFRESH_S)
            if self._sock is None:
                continue
            runs, chunk, size = self.wakeups.runs(), [], 0
            peers = self._peer_list()
            for index, run_id in enumerate(runs):
                chunk.append(run_id)
                size += len(run_id) + 4
                if size > MAX_DATAGRAM // 2 or index == len(runs) - 1:
                    datagram = json.dumps({"follow": chunk}, separators=(",", ":")).encode()
                    for peer in peers:
                        self._send(datagram, peer)
                    chunk, size = [], 0

    def _readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                data, sender = sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.info("same-host wake-up socket: %s", error)
                return
            self.received += 1
            parsed = _parse(data)
            if isinstance(parsed, tuple):
                self.wakeups.notify(*parsed)
            elif isinstance(parsed, dict) and isinstance(sender, str) and sender.startswith(f"{self.directory}/"):
                lapses = time.monotonic() + INTEREST_TTL_S
                for run_id in parsed.get("follow", ()):
                    self._interest.setdefault(run_id, {})[sender] = lapses
                for run_id in parsed.get("unfollow", ()):
                    peers = self._interest.get(run_id)
                    if peers is not None:
                        peers.pop(sender, None)
                        if not peers:
                            del self._interest[run_id]
            else:
                self.malformed += 1


def _parse(data: bytes) -> tuple[str, int] | dict[str, list[str]] | None:
    """``(run_id, seq)`` from a wake-up, ``{"follow"|"unfollow": [run ids]}`` from an interest, or None."""
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if isinstance(value, dict):
        if not value or set(value) - {"follow", "unfollow"}:
            return None
        for ids in value.values():
            if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 256 for i in ids):
                return None
        return value
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str) or not value[0]
            or not isinstance(value[1], int) or isinstance(value[1], bool) or value[1] < 1):
        return None
    return value[0], value[1]
