"""The reusable election module on real etcd: one leader, hand-over, fencing of a deposed leader."""

import asyncio

from mabeam.etcd.client import EtcdClient, op_put
from mabeam.etcd.election import Election
from mabeam.etcd.session import Session


async def test_one_leader_handover_and_fencing(etcd_server, cluster_name) -> None:
    client = EtcdClient([etcd_server.endpoint])
    prefix = f"/mabeam/{cluster_name}/election/coordinator/".encode()
    sessions = [await Session.open(client, 2) for _ in range(3)]
    elections = [Election(client, s, prefix, f"cand-{i}".encode()) for i, s in enumerate(sessions)]
    try:
        campaigns = [asyncio.create_task(e.campaign()) for e in elections]
        done, pending = await asyncio.wait(campaigns, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "exactly one candidate leads"
        leader = elections[campaigns.index(done.pop())]
        assert [e.is_leader for e in elections].count(True) == 1
        # The leader's fenced write succeeds while its term is current.
        ok = await client.txn([leader.fence()], [op_put(prefix + b"data", b"v1")])
        assert ok.succeeded
        await leader.resign()
        done, pending = await asyncio.wait(pending, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "the next candidate takes over after a resign"
        successor = elections[campaigns.index(done.pop())]
        assert successor.term > leader.term
        # The deposed leader's fenced write is refused.
        stale = await client.txn([leader.fence()], [op_put(prefix + b"data", b"stale")])
        assert not stale.succeeded
        assert (await client.get(prefix + b"data")).value == b"v1"
        for task in pending:
            task.cancel()
    finally:
        for session in sessions:
            await session.close()
        await client.close()


async def test_session_loss_is_reported(etcd_server) -> None:
    client = EtcdClient([etcd_server.endpoint])
    session = await Session.open(client, 2)
    try:
        keepalive = asyncio.create_task(session.keepalive())
        await client.revoke(session.lease_id)  # etcd forgets the lease behind the session's back
        await asyncio.wait_for(keepalive, timeout=3)
        assert session.lost.is_set() and session.expired_locally
    finally:
        await session.close()
        await client.close()
