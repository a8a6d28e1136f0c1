"""An etcd member that goes silent (SIGSTOP: its connections stay open, nothing answers), as a partitioned
etcd host does: a client whose connection started at that member moves to another one before its lease
can expire, and its watch resumes there."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator

import pytest

from mabeam.dev.testing import async_wait_until
from mabeam.etcd.client import EtcdClient, EtcdError
from mabeam.etcd.embedded import EmbeddedEtcd, EtcdStartError, pick_port
from mabeam.etcd.session import Session


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
def three_members() -> Iterator[list[EmbeddedEtcd]]:
    base = tempfile.mkdtemp(prefix="mabeam-etcd3-")
    members: list[EmbeddedEtcd] = []
    try:
        # The members must know each other's ports before any starts: ports picked below the ephemeral range
        # (only another explicit chooser can take one), and all picked again should one be taken meanwhile.
        for attempt in range(5):
            taken: set[int] = set()
            for _ in range(6):
                taken.add(pick_port(avoid=taken))
            chosen = sorted(taken)
            ports = [(chosen[2 * i], chosen[2 * i + 1]) for i in range(3)]
            initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_, peer) in enumerate(ports))
            members = [EmbeddedEtcd(data_dir=f"{base}/{attempt}/m{i}", client_port=client, peer_port=peer,
                                    name=f"m{i}", initial_cluster=initial, cluster_token=f"{os.path.basename(base)}-{attempt}")
                       for i, (client, peer) in enumerate(ports)]
            try:
                for member in members:
                    member.start(wait=False)
                for member in members:
                    member.wait_healthy(30)
                break
            except EtcdStartError as error:
                for member in members:
                    member.close()
                if "address already in use" not in str(error) or attempt == 4:
                    raise
        yield members
    finally:
        for member in members:
            if member.pid is not None:
                os.kill(member.pid, signal.SIGCONT)
            member.close()
        shutil.rmtree(base, ignore_errors=True)


async def test_client_leaves_a_silent_member_before_its_lease_expires(three_members: list[EmbeddedEtcd]) -> None:
    first = three_members[0]
    client = EtcdClient([m.endpoint for m in three_members], timeout=3.0)
    session = await Session.open(client, ttl=3)
    keepalive = asyncio.create_task(session.keepalive())
    try:
        await client.put(b"/silent/before", b"1", session.lease_id)
        watched: list[bytes] = []

        async def watch() -> None:
            while True:
                try:
                    kvs, revision = await client.get_prefix(b"/silent/")
                    watched.extend(kv.key for kv in kvs)
                    async for batch in client.watch_prefix(b"/silent/", revision + 1):
                        watched.extend(ev.kv.key for ev in batch.events)
                except EtcdError:  # the watch breaks at the failover (never as a cancellation): re-read
                    await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        await client.put(b"/silent/marker", b"0")
        # The watch stream is open on the first member's connection once the marker came through it.
        await async_wait_until(lambda: _true(b"/silent/marker" in watched), 10, what="marker watched")
        assert first.pid is not None
        os.kill(first.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        # Keepalives must keep landing on another member: the lease outlives 2 TTLs of silence.
        deadline = stopped + 15.0
        while True:
            try:
                await client.put(b"/silent/after", b"2", session.lease_id)
                break
            except Exception:  # noqa: BLE001 - until the client has moved (or the deadline)
                assert time.monotonic() < deadline, "no write succeeded with the first member silent"
                await asyncio.sleep(0.05)
        assert client.failovers >= 1 and client.current_endpoint != first.endpoint
        while time.monotonic() < stopped + 2 * session.ttl:
            assert not session.lost.is_set(), "the lease was lost while another member could renew it"
            await asyncio.sleep(0.1)
        assert (await client.get(b"/silent/before")) is not None, "the lease's key expired"
        while b"/silent/after" not in watched:
            assert time.monotonic() < deadline, "the watch did not resume on another member"
            assert not watcher.done(), f"the watch ended: {watcher}"
            await asyncio.sleep(0.05)
        assert not watcher.done(), f"the watch ended: {watcher}"
    finally:
        for task in (keepalive, locals().get("watcher")):
            if task is not None:
                task.cancel()
        await client.close()
