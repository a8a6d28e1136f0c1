"""The scripted tour behind ``make demo``: a real 3-node dev cluster, driven through the SDKs.

Embedded etcd and three nodes (meshd, agentd, coordinator each) start on free
loopback ports. The tour shows a supervised team of agents (a crash restored
from its checkpoint, a hang killed by its timeout, a call across nodes by
name), an English auction surviving a kill -9 of the active coordinator, a
durable run streamed over SSE from another node while its executor is killed with
-9 (the stream continues gap-free), an LLM agent whose run survives a kill -9 while a
tool waits for a human's approval, then membership, the leader, a name registered on one node and resolved on another,
a group spanning nodes, and a node killed with -9 and seen leaving (with its
names) while the leadership moves; the models layer; and, on a second cluster
with tokens, mTLS and CURVE, a refused call without a token, two tenants that
cannot see each other's agents, and a quota that holds (:mod:`mabeam.dev.demo_secure`).
"""

from __future__ import annotations

import asyncio
import sys
import time

from rich.console import Console
from rich.table import Table

from mabeam.dev import demo_models, demo_scenes, demo_secure, demo_work
from mabeam.dev.cluster import DevCluster
from mabeam.dev.fakellm.process import FakeLLMProcess
from mabeam.dev.testing import wait_until
from mabeam_client.mesh import SyncMeshClient

console = Console()


def step(title: str) -> None:
    """Print a tour heading."""
    console.rule(f"[bold cyan]{title}")


def members_table(client: SyncMeshClient) -> Table:
    """The members as node-1 sees them, with the leader marked."""
    leader = client.leader().node_id
    table = Table("node", "gRPC", "metrics", "lease", "")
    for m in client.members():
        table.add_row(m.node_id, m.grpc_address, m.metrics_address, f"{m.lease_id:x}",
                      "[green]leader[/green]" if m.node_id == leader else "")
    return table


def tour(cluster: DevCluster) -> None:
    """Run the scripted steps against a started cluster."""
    clients = [SyncMeshClient(e) for e in cluster.endpoints]
    try:
        n1, n2, n3 = clients
        step("11. three meshd processes joined through etcd")
        wait_until(lambda: len(n1.members()) == 3, 5.0, what="three members")
        console.print(members_table(n1))

        step("12. the leader of role 'mesh' (same answer from every node)")
        for client in clients:
            leader = client.leader()
            console.print(f"asked {client.ping().node.node_id}: leader is [bold]{leader.node_id}[/bold] "
                          f"(term {leader.term})")

        step("13. a name registered on node-1, looked up on node-3")
        entry = n1.register_name("planner", "agent-7", metadata={"model": "large"})
        started = time.perf_counter()
        found = wait_until(lambda: n3.lookup("planner"), 2.0, interval=0.001, what="name visible on node-3")
        console.print(f"node-1 registered 'planner' → agent-7 (etcd revision {entry.revision}); node-3 resolved it "
                      f"to agent {found.target.agent_id} on {found.target.node_id} within "
                      f"{(time.perf_counter() - started) * 1000:.1f} ms (from its local cache)")
        try:
            n2.register_name("planner", "agent-9")
        except Exception as error:  # noqa: BLE001 - the point is to show the error
            console.print(f"node-2 tried to take 'planner' too: [yellow]{error}[/yellow]")

        step("14. a group spanning nodes (Erlang :pg style)")
        n2.join_group("workers", "w-2")
        n3.join_group("workers", "w-3")
        wait_until(lambda: len(n1.group_members("workers")) == 2, 2.0, what="group visible")
        console.print("workers: " + ", ".join(f"{m.member.agent_id}@{m.member.node_id}"
                                              for m in n1.group_members("workers")))

        step("15. kill -9 the leader: it leaves when its lease expires; a new leader takes over")
        victim = n1.leader().node_id  # kill the leader, so leadership has to move
        index = int(victim.split("-")[1]) - 1
        witness = clients[(index + 1) % 3]
        killed = time.monotonic()
        cluster.kill(index)
        console.print(f"killed {victim} (pid gone, no goodbye); lease TTL is {cluster.lease_ttl} s")
        wait_until(lambda: victim not in {m.node_id for m in witness.members()}, cluster.lease_ttl + 2.0,
                   interval=0.01, what=f"{victim} gone")
        console.print(f"{victim} left the view after {time.monotonic() - killed:.2f} s")
        new_leader = wait_until(lambda: witness.leader().node_id, cluster.lease_ttl + 2.0, what="a leader")
        console.print(f"leader now: [bold]{new_leader}[/bold]; workers: "
                      + (", ".join(f"{m.member.agent_id}@{m.member.node_id}"
                                   for m in witness.group_members("workers")) or "(none)"))
        names = ", ".join(e.name for e in witness.names()) or "(none: 'planner' went with node-1)"
        console.print(f"names now: {names}")
        console.print(members_table(witness))
    finally:
        for client in clients:
            client.close()


def main() -> int:
    """Start the cluster, run the tour, stop everything."""
    console.print("[bold]mabeam demo[/bold]: embedded etcd + 3 nodes (meshd, agentd, coordinator) on 127.0.0.1, "
                  "ports chosen by the OS")
    cluster = DevCluster(nodes=3, lease_ttl=2, agentd=True, coordinator=True,
                         runs_config={"lease_ttl": 2})
    # The local model server first: every agentd inherits its address (the LLM agent scene).
    llm = FakeLLMProcess().start()
    ledger = cluster.run_dir / "tool-ledger.jsonl"
    ledger.touch()
    demo_work.configure(llm, ledger)
    try:
        cluster.start()
        # Agents and the auction first, on the whole cluster; the mesh scenes end by killing a node.
        asyncio.run(demo_scenes.agents_scene(cluster, step))
        asyncio.run(demo_scenes.auction_scene(cluster, step))
        asyncio.run(demo_scenes.runs_scene(cluster, step))
        asyncio.run(demo_work.llm_agent_scene(cluster, llm, ledger, step))
        tour(cluster)
        demo_models.models_scene(step)
    finally:
        cluster.close()
        llm.close()
    demo_secure.secure_scene(step)
    console.rule("[bold green]demo finished: everything stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
