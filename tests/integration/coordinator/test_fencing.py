"""The committer's fence in-process: a deposed leader's transaction is refused even when it skips local checks."""

from __future__ import annotations

import asyncio

import pytest

from coordinator import keys
from coordinator.store import CommitFailed, Committer, Fenced
from mabeam.etcd.client import EtcdClient
from mabeam.etcd.election import Election
from mabeam.etcd.session import Session


async def test_deposed_committer_is_fenced(etcd_server, cluster_name) -> None:
    # Leader A commits; A's lease is revoked (as if it expired during a pause); B campaigns and leads.
    # A's next commit fails the fence compare, writes nothing, and breaks the committer for good.


    client = EtcdClient([etcd_server.endpoint])
    prefix = keys.election(cluster_name)
    session_a = await Session.open(client, 2)
    election_a = Election(client, session_a, prefix, b"a")
    await election_a.campaign()
    committer = Committer(client, election_a.fence())
    runner = asyncio.create_task(committer.run())
    key = keys.base(cluster_name) + b"probe"
    await committer.commit({key: b"from-a"})
    await client.revoke(session_a.lease_id)
    session_b = await Session.open(client, 2)
    election_b = Election(client, session_b, prefix, b"b")
    await election_b.campaign()
    with pytest.raises(Fenced):
        await committer.commit({key: b"stale"})
    assert (await client.get(key)).value == b"from-a"
    with pytest.raises(CommitFailed):
        await committer.commit({key: b"again"})
    await runner
    await session_b.close()
    await client.close()


async def test_group_commit_batches_concurrent_writes(etcd_server, cluster_name) -> None:
    # 200 groups staged at once land in a few transactions, each group intact and in order.


    client = EtcdClient([etcd_server.endpoint])
    session = await Session.open(client, 2)
    election = Election(client, session, keys.election(cluster_name), b"a")
    await election.campaign()
    committer = Committer(client, election.fence())
    runner = asyncio.create_task(committer.run())
    base = keys.base(cluster_name)
    futures = [committer.stage({base + f"k{i:04d}".encode(): b"v", base + b"last": str(i).encode()})
               for i in range(200)]
    await asyncio.gather(*futures)
    assert committer.stats.groups == 200
    assert committer.stats.transactions <= 10
    assert (await client.get(base + b"last")).value == b"199"
    kvs, _ = await client.get_prefix(base + b"k")
    assert len(kvs) == 200
    runner.cancel()
    await session.close()
    await client.close()
