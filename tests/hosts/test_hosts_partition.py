"""Network partitions on the multi-host bed: a host cut off both ways, and one way only, then healed.

Every scenario runs the full workload (agents on every host calling each other's
counters, a bid stream per host, name and group registrations) and checks every
invariant of docs/testbed.md: nothing acknowledged lost, one coordinator leader
writing at a time, names and groups converged on every node within TTL + 2 s of
the heal, failures typed and within their deadline.
"""

from __future__ import annotations

from mabeam.dev.hostbed import HostBed
from mabeam.dev.hostbed.workload import Workload


async def test_partition_coordinator_leader_host_both_ways_then_heal(bed: HostBed, workload: Workload) -> None:
    """Failure: the host running the active coordinator loses all traffic, both directions (tc netem
    loss 100% on both ends of its link), for longer than the lease TTL: its meshd, agentd, coordinator
    and etcd member are cut off from the other two hosts and from clients outside.

    Expected healing: the other two hosts keep a quorum of etcd; the cut host's lease expires, so it
    leaves their membership views and its names and group members vanish there; calls from them to its
    agents fail with a typed error (UNAVAILABLE / DEADLINE_EXCEEDED) within their deadline; a standby
    coordinator takes over (fenced: the old leader cannot write) and bid streams follow it without
    losing an acknowledged bid. After the heal, with nobody acting, the host re-registers under a new
    lease: within TTL + 2 s its names and group members are back on every node and every agentd reaches
    every counter again.
    """
    await workload.start()
    await workload.wait_progress()
    cut = await workload.coordinator_leader()
    others = [h for h in bed.hosts if h is not cut]
    started = bed.partition(cut, "both")
    await workload.wait_member_state(cut, present=False, observers=others, timeout=bed.lease_ttl + 5)
    await workload.wait_failed_calls_to(cut, since=started)
    await workload.wait_progress(since=started, hosts=others)
    healed = bed.heal(cut)
    await workload.check_healed(healed)
    await workload.wait_progress(since=healed)
    await workload.finish()


async def test_asymmetric_partition_etcd_leader_host_then_heal(bed: HostBed, workload: Workload) -> None:
    """Failure: the host running the etcd leader can still receive but nothing it sends arrives
    (blackhole on its egress only), for longer than the lease TTL: its etcd member stops reaching the
    other two, its meshd and coordinator stop reaching etcd, its data plane goes silent.

    Expected healing: the two other etcd members elect a new leader and keep serving; the clients there
    that were connected to the cut member move to another one (a keepalive that gets no answer makes the
    etcd client fail over) before their own leases can expire. The cut host's lease expires: it leaves
    every other node's view, calls to its agents fail with a typed error within their deadline. After the
    heal it rejoins by itself, and within TTL + 2 s its names and groups are back everywhere and every
    agentd reaches every counter.
    """
    await workload.start()
    await workload.wait_progress()
    assert bed.etcd is not None
    cut = bed.host(bed.etcd.leader().host.name)
    others = [h for h in bed.hosts if h is not cut]
    started = bed.partition(cut, "egress")
    await workload.wait_member_state(cut, present=False, observers=others, timeout=bed.lease_ttl + 8)
    await workload.wait_failed_calls_to(cut, since=started)
    await workload.wait_progress(since=started, hosts=others)
    healed = bed.heal(cut)
    await workload.check_healed(healed)
    await workload.wait_progress(since=healed)
    await workload.finish()
