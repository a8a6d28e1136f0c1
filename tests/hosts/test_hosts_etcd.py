"""etcd members killed under the running mesh: one member, then the leader, each restarted, on the bed."""

from __future__ import annotations

from mabeam.dev.hostbed import HostBed
from mabeam.dev.hostbed.workload import Workload


async def test_kill9_etcd_member_then_leader_and_restart_them(bed: HostBed, workload: Workload) -> None:
    """Failure: kill -9 of one etcd follower; once it is restarted, kill -9 of the etcd leader, restarted in
    turn (each time two of three members keep a quorum). Every daemon keeps running.

    Expected healing: the cluster keeps serving through each kill (a new etcd leader is elected after the
    leader's); clients connected to a killed member reconnect to another one (the connection is refused or
    reset, and a silent one is left when its keepalive gets no answer), before their leases can expire, so
    no node leaves the membership, no name is lost and the coordinator goes on (a leader whose commit was
    interrupted ends its term and is replaced, fenced). A restarted member catches up from the others.
    Within TTL + 2 s of each restart the registry agrees on every node and every agentd reaches every
    counter; nothing acknowledged is lost.
    """
    assert bed.etcd is not None
    await workload.start()
    await workload.wait_progress()
    follower = bed.etcd.followers()[0]
    started = bed.note(f"kill -9 etcd member {follower.name} (a follower)")
    bed.etcd.kill(follower)
    await workload.wait_progress(since=started)
    bed.etcd.restart(follower)
    healed = bed.note(f"etcd member {follower.name} restarted")
    await workload.check_healed(healed)

    leader = bed.etcd.leader()
    started = bed.note(f"kill -9 etcd member {leader.name} (the leader)")
    bed.etcd.kill(leader)
    bed.note(f"etcd leader now {bed.etcd.leader().name}")
    await workload.wait_progress(since=started)
    bed.etcd.restart(leader)
    healed = bed.note(f"etcd member {leader.name} restarted")
    await workload.check_healed(healed)
    await workload.wait_progress(since=healed)
    await workload.finish()
