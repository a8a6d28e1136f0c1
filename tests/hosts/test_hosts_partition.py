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
