"""Wake-ups: a new event reaches the followers of its run on every node promptly, without polling the log.

The log stays the truth; a wake-up only says "run R has events up to seq S, read
again". A follower subscribes *before* it reads (:meth:`Wakeups.subscribe`), so a
commit between its read and its wait still wakes it.

- In one process, every commit calls :meth:`Wakeups.committed` (the store's
  ``on_commit`` hook) with the events it committed: a stream follower of the same
  node takes them from its subscription when they are exactly the next stretch of
  the log (:meth:`Subscription.take`), and reads the log otherwise (a gap, an
  event committed by another process, a missed notification). That saves the read
  — a hop to the store's reader thread — on the delivery path (``python -m bench
  runs``, stream_delivery_same_node).
- Between processes and hosts:
  - **PostgreSQL**: each commit sends ``NOTIFY`` in its transaction; every agentd
    ``LISTEN``\\ s on one connection (:class:`PostgresRelay`).
  - **SQLite**: a node puts ``runs/wake/<node_id>`` in etcd with the runs it
    appended to and their last seqs; every agentd watches ``runs/wake/``
    (:class:`EtcdRelay`). At most one put is in flight per node: commits that
    arrive meanwhile are coalesced into the next put, so a burst of appends costs a
    few etcd writes, not one each.
  When a relay (re)connects, every local follower is woken once, since
  notifications may have been missed while it was away.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agentd.runs.model import EventRow, RunRow
from mabeam import keys
from mabeam.etcd.client import EtcdClient, EtcdError

log = logging.getLogger("agentd.runs.wake")

#: Events a hand-off subscription keeps for a follower that has not taken them; past it, the follower reads the log.
HANDOFF_LIMIT = 1024


class Subscription:
    """One follower's interest in one run: ``wait`` returns once something was appended since ``clear``.

    With ``handoff`` (a stream follower), the subscription also keeps the events this process committed
    since the last :meth:`take`, so the follower can deliver them without reading the log again.
    """

    __slots__ = ("run_id", "_event", "_owner", "handoff", "_handed", "_row", "_known", "_doubt")

    def __init__(self, owner: Wakeups, run_id: str, handoff: bool = False) -> None:
        self.run_id = run_id
        self._event = asyncio.Event()
        self._owner = owner
        #: True for a stream follower: it keeps the events this process commits (see :meth:`take`).
        self.handoff = handoff
        self._handed: list[EventRow] = []
        self._row: RunRow | None = None
        #: The highest seq anyone announced for the run (local commits and other nodes' relays).
        self._known = 0
        #: Set when something may have been missed (a relay reconnected, an announcement without a seq, an
        #: overflowing hand-off): the follower must read the log.
        self._doubt = False

    def clear(self) -> None:
        """Forget earlier wake-ups (call before reading the log)."""
        self._event.clear()
        self._handed.clear()
        self._row = None
        self._doubt = False

    def set(self) -> None:
        """Wake the follower."""
        self._event.set()

    def announce(self, seq: int) -> None:
        """Events up to ``seq`` exist (0: unknown, so the log must be read): wake the follower."""
        if seq <= 0:
            self._doubt = True
        elif seq > self._known:
            self._known = seq
        self._event.set()

    def hand(self, row: RunRow, events: Sequence[EventRow]) -> None:
        """This process committed ``events`` (the run's row after the commit is ``row``): keep them, wake."""
        if self.handoff:
            if len(self._handed) + len(events) > HANDOFF_LIMIT:
                self._handed.clear()  # a follower that far behind reads the log
                self._doubt = True
            else:
                self._handed.extend(events)
                if self._row is None or row.last_seq > self._row.last_seq:
                    self._row = row
        self.announce(row.last_seq)

    def take(self, cursor: int) -> tuple[RunRow | None, list[EventRow]] | None:
        """After a wake-up: the run's row and the events after ``cursor`` handed since the last take; ``(None,
        [])`` when nothing past ``cursor`` was announced (keep the row you have); None when the log must be
        read instead. Clears the wake-up.

        The hand-off is used only when it is exactly the next stretch of the log: its events are
        ``cursor + 1`` .. ``row.last_seq`` without a gap, and nobody announced a later seq (a commit by another
        process or node, which only the log has). Anything else — a gap, an event committed elsewhere, a missed
        notification — answers None, so the log stays the only truth and the hand-off only saves a read.
        """
        handed, row, doubt = self._handed, self._row, self._doubt
        self._handed = []
        self.clear()
        if doubt:
            return None
        if row is None or row.last_seq <= cursor:  # nothing handed, or only what the follower has already
            return (None, []) if self._known <= cursor else None
        if self._known > row.last_seq:
            return None
        events = sorted((e for e in handed if e.seq > cursor), key=lambda e: e.seq)
        if [e.seq for e in events] != list(range(cursor + 1, row.last_seq + 1)):
            return None
        return row, events

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for a wake-up (True) or the timeout (False)."""
        if timeout is None:
            await self._event.wait()
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        """Stop following."""
        self._owner._drop(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Wakeups:
    """This process's followers, by run."""

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        #: Wake-ups delivered (for metrics and tests).
        self.delivered = 0
        #: Called with (run_id, True) when the run gets its first follower here, (run_id, False) when it loses
        #: its last (the same-host relay tells the other agentd which runs to send datagrams about).
        self.on_follow: Callable[[str, bool], None] | None = None

    def subscribe(self, run_id: str, handoff: bool = False) -> Subscription:
        """Follow ``run_id`` (use as a context manager, or ``close`` it); ``handoff``: keep local commits."""
        sub = Subscription(self, run_id, handoff)
        subs = self._subs.setdefault(run_id, set())
        subs.add(sub)
        if len(subs) == 1 and self.on_follow is not None:
            self.on_follow(run_id, True)
        return sub

    def _drop(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.run_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.run_id]
                if self.on_follow is not None:
                    self.on_follow(sub.run_id, False)

    def followed(self, run_id: str) -> bool:
        """True when someone here follows the run."""
        return run_id in self._subs

    def runs(self) -> list[str]:
        """The runs someone here follows."""
        return list(self._subs)

    def committed(self, row: RunRow, events: Sequence[EventRow]) -> None:
        """This process committed ``events`` to ``row.run_id`` (``row`` as after the commit): hand them over.

        Stream followers are woken first, so their tasks run before the executor's: what is committed goes out
        to watchers before the next piece of work starts (the executor's read and its worker round trip).
        """
        subs = self._subs.get(row.run_id, ())
        for first in (True, False):
            for sub in subs:
                if sub.handoff is first:
                    sub.hand(row, events)
                    self.delivered += 1

    def notify(self, run_id: str, seq: int = 0) -> None:
        """Events up to ``seq`` were appended to ``run_id`` (elsewhere, or 0: unknown): wake its followers."""
        for sub in self._subs.get(run_id, ()):
            sub.announce(seq)
            self.delivered += 1

    def notify_all(self) -> None:
        """Wake every follower (a relay reconnected and may have missed notifications)."""
        for subs in self._subs.values():
            for sub in subs:
                sub.announce(0)


class EtcdRelay:
    """SQLite stores: tell other nodes through a per-node etcd key, hear them through a watch."""

    def __init__(self, client: EtcdClient, cluster: str, node_id: str, wakeups: Wakeups) -> None:
        self.client = client
        self.cluster = cluster
        self.node_id = node_id
        self.wakeups = wakeups
        self._dirty: dict[str, int] = {}
        self._pending = asyncio.Event()
        self.puts = 0
        #: Seconds a put waits for more commits to coalesce. 0 (a put at once) unless something faster carries
        #: the wake-ups: with same-host datagrams in front (agentd/runs/localwake.py) etcd is the safety net,
        #: and one put per burst — not one per commit of a frame's handling — keeps its CPU (this agentd's
        #: client, etcd, every watcher) off the two shared cores while the datagram's wake-up is delivered.
        self.settle = 0.0

    def published(self, run_id: str, seq: int) -> None:
        """A local commit: relay it to the other nodes with the next put."""
        if self._dirty.get(run_id, 0) < seq:
            self._dirty[run_id] = seq
        self._pending.set()

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Publish and watch until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._publish())
            group.create_task(self._watch(ready))

    async def _publish(self) -> None:
        key = keys.run_wake(self.cluster, self.node_id)
        while True:
            await self._pending.wait()
            if self.settle > 0:
                await asyncio.sleep(self.settle)
            self._pending.clear()
            batch, self._dirty = self._dirty, {}
            try:
                await self.client.put(key, json.dumps(batch, separators=(",", ":")).encode())
                self.puts += 1
            except EtcdError as error:
                log.warning("wake-up relay: etcd put failed (%s); other nodes' followers wake on reconnect", error)
                await asyncio.sleep(0.2)

    async def _watch(self, ready: Callable[[], None] | None) -> None:
        prefix = keys.run_wakes(self.cluster)
        own = keys.run_wake(self.cluster, self.node_id)
        while True:
            try:
                revision = await self.client.revision()
                self.wakeups.notify_all()
                if ready is not None:
                    ready()
                    ready = None
                async for batch in self.client.watch_prefix(prefix, revision + 1):
                    for event in batch.events:
                        if event.kind != "put" or event.kv.key == own:
                            continue
                        try:
                            runs = json.loads(event.kv.value)
                        except ValueError:
                            continue
                        if isinstance(runs, dict):
                            for run_id, seq in runs.items():
                                self.wakeups.notify(str(run_id), int(seq) if isinstance(seq, int) else 0)
            except EtcdError as error:
                log.info("wake-up watch interrupted (%s); watching again", error)
                await asyncio.sleep(0.2)


class PostgresRelay:
    """PostgreSQL stores: the commits' NOTIFY reach every agentd's LISTEN connection."""

    def __init__(self, listen: Callable[[Callable[[str, int], None], Callable[[], None]],
                                        Awaitable[Callable[[], Any]]], wakeups: Wakeups) -> None:
        self._listen = listen
        self.wakeups = wakeups

    def published(self, run_id: str, seq: int) -> None:
        """Nothing to do: the commit itself sent NOTIFY."""

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Listen until cancelled (reconnecting after a lost connection)."""
        while True:
            lost = asyncio.Event()
            try:
                close = await self._listen(self.wakeups.notify, lost.set)
            except Exception as error:  # noqa: BLE001 - asyncpg raises many kinds; retry all
                log.warning("LISTEN failed (%s); retrying", error)
                await asyncio.sleep(0.5)
                continue
            self.wakeups.notify_all()
            if ready is not None:
                ready()
                ready = None
            try:
                await lost.wait()
                log.warning("the LISTEN connection was lost; listening again")
            finally:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
