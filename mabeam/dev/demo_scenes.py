"""The agentd and coordinator scenes of ``make demo`` (the mesh scenes are in :mod:`mabeam.dev.demo`)."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.tree import Tree

from coordinator.mechanisms import verify_receipt
from mabeam.dev.cluster import DevCluster
from mabeam.dev.testing import async_wait_until
from mabeam_client.agents import AgentClient
from mabeam_client.coordinator import CoordinatorClient
from mabeam_client.errors import MabeamError

console = Console()


async def _until(probe, timeout: float, what: str):  # type: ignore[no-untyped-def]
    return await async_wait_until(probe, timeout, interval=0.05, what=what)


async def agents_scene(cluster: DevCluster, step) -> None:  # type: ignore[no-untyped-def]
    """A supervised team: a crash restored from its checkpoint, a hang killed by its timeout, a remote call."""
    node1, node2 = cluster.nodes[0], cluster.nodes[1]
    assert node1.agentd is not None and node2.agentd is not None
    async with AgentClient(node1.agentd.endpoint) as a1, AgentClient(node2.agentd.endpoint) as a2:
        step("1. agentd: a supervised team on node-1 (OTP behaviours, checkpoints)")
        await a1.spawn("counter", {"start": 0}, name="tally", restart="permanent")
        await a1.spawn("counter", {"start": 0}, name="sleepy", restart="permanent")
        await a1.spawn("echo", {}, name="greeter", restart="permanent")
        for amount in (5, 7):
            await a1.cast("tally", amount)
        await _until(lambda: _is(a1.call("tally", "get"), 12), 5, "casts applied")
        console.print("tally counted 5 + 7 = 12 and checkpointed it")
        tree = Tree("supervision tree (node-1)")

        def add(branch: Tree, node) -> None:  # type: ignore[no-untyped-def]
            label = f"{node.name or node.agent_id} [{node.type or node.strategy}] {node.status}"
            child = branch.add(label + (f" (worker {node.worker})" if node.worker else ""))
            for sub in node.children:
                add(child, sub)

        for root in await a1.tree():
            add(tree, root)
        console.print(tree)

        step("2. let it crash: tally crashes on purpose and comes back with its checkpoint")
        try:
            await a1.call("tally", "crash")
        except MabeamError as error:
            console.print(f"tally crashed: [yellow]{error}[/yellow]")
        restarts = await _until(lambda: a1.call("tally", "restarts"), 5, "tally restarted")
        console.print(f"restarted by its supervisor ({restarts} restart); state after restart: "
                      f"n = {await a1.call('tally', 'get')}")

        step("3. a hung agent is killed by its per-message timeout (5 s) and restarted")
        started = time.monotonic()
        await a1.cast("sleepy", "hang")
        info = await _until(lambda: _restarted(a1, "sleepy"), 15, "sleepy restarted")
        console.print(f"sleepy hung; after {time.monotonic() - started:.1f} s it was killed with reason "
                      f"'{info.last_error or 'timeout'}' and restarted ({info.restarts} restart)")

        step("4. a call across nodes by name: node-2's agentd → meshd → node-1 → tally")
        started = time.perf_counter()
        value = await a2.call("tally", "get")
        console.print(f"node-2 called 'tally' (registered by node-1's agentd in meshd): n = {value}, "
                      f"{(time.perf_counter() - started) * 1000:.1f} ms")


async def _is(coro, value) -> bool:  # type: ignore[no-untyped-def]
    return (await coro) == value


async def _restarted(client: AgentClient, name: str):  # type: ignore[no-untyped-def]
    info = await client.get(name)
    return info if info.restarts >= 1 and info.status != "starting" else None


async def auction_scene(cluster: DevCluster, step) -> None:  # type: ignore[no-untyped-def]
    """An English auction that survives a kill -9 of the active coordinator."""
    endpoints = [n.coordinator.endpoint for n in cluster.nodes if n.coordinator is not None]
    coord = CoordinatorClient(endpoints, failover_timeout=20.0)
    try:
        step("5. coordinator: an English auction on etcd, active/standby")
        leader = await _until(lambda: _leader(coord), 10, "a coordinator leader")
        console.print(f"active coordinator: {leader.leader_node_id} ({leader.leader_address}); "
                      f"{len(endpoints) - 1} standbys")
        start = int(time.time() * 1000)
        config = {"start_price": 10, "min_increment": 5, "opens_at": start, "quiet_period": 2500,
                  "hard_deadline": start + 30_000}
        auction = await coord.create_auction("english", config)
        bids = [("alice", 10), ("bob", 20), ("alice", 30)]
        for bidder, amount in bids:
            ack = await coord.submit_bid(auction.id, {"type": "bid", "bidder": bidder, "amount": amount})
            console.print(f"{bidder} bids {amount}: durable in etcd as event #{ack.seq}")

        step("6. kill -9 the active coordinator mid-auction; a standby takes over")
        index = next(i for i, n in enumerate(cluster.nodes) if n.node_id == leader.leader_node_id)
        victim = cluster.nodes[index].coordinator
        assert victim is not None and victim.proc is not None
        killed = time.monotonic()
        victim.proc.kill()
        victim.proc.wait()
        ack = await coord.submit_bid(auction.id, {"type": "bid", "bidder": "bob", "amount": 45})
        new = await coord.leader()
        console.print(f"bob bids 45 → accepted by {new.leader_node_id} as event #{ack.seq}, "
                      f"{time.monotonic() - killed:.2f} s after the kill (nothing acknowledged was lost)")
        final = await _until(lambda: _concluded(coord, auction.id), 15, "the auction closed")
        outcome = final.outcome
        console.print(f"closed after its quiet period: winner [bold]{outcome.get('winner')}[/bold] pays "
                      f"{outcome.get('price')}; receipt {final.receipt_hash[:16]}… verifies by replay: "
                      f"{verify_receipt(final.receipt)}")
    finally:
        await coord.close()


async def _leader(coord: CoordinatorClient):  # type: ignore[no-untyped-def]
    leader = await coord.leader()
    return leader if leader.leader_node_id else None


async def _concluded(coord: CoordinatorClient, auction_id: str):  # type: ignore[no-untyped-def]
    final = await coord.get_auction(auction_id)
    return final if final.state == "concluded" else None


async def runs_scene(cluster: DevCluster, step) -> None:  # type: ignore[no-untyped-def]
    """A durable run on node-1 streamed over SSE from node-2; node-1's agentd killed with -9 mid-run."""
    import httpx

    from mabeam_client.runs import RunClient

    node1, node2 = cluster.nodes[0], cluster.nodes[1]
    assert node1.agentd is not None and node2.agentd is not None
    step("7. durable runs: a run started on node-1, streamed from node-2 over HTTP (Server-Sent Events)")
    async with RunClient(node1.agentd.endpoint) as runs:
        started = await runs.start("tasker", {"steps": 24, "delay": 0.15, "finish": True}, run_id="demo-run")
        await runs.start("tasker", {"steps": 24, "delay": 0.15, "finish": True}, run_id="demo-run")  # idempotent
    console.print(f"run {started.run.run_id} executes on {started.run.executor.node_id} (fencing token "
                  f"{started.run.executor.fencing_token}); starting it again returned the same run")
    console.print(f"curl -N http://{node2.agentd.http_endpoint}/v1/runs/demo-run/stream")
    seqs: list[int] = []
    killed_at = 0.0
    resumed_after = 0.0
    async with httpx.AsyncClient(timeout=120) as http:
        async with http.stream("GET", f"http://{node2.agentd.http_endpoint}/v1/runs/demo-run/stream") as response:
            event: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line:
                    field, _, value = line.partition(": ")
                    event[field] = value
                    continue
                if event.get("data") == "[DONE]":
                    console.print("data: [DONE] — the run ended and the stream closed")
                    break
                if "id" not in event:
                    event = {}
                    continue
                seq, kind = int(event["id"]), event.get("event", "")
                seqs.append(seq)
                payload = json.dumps(json.loads(event["data"])["payload"], separators=(",", ":"))
                if kind not in ("progress", "step.completed") or (kind == "progress" and seq % 4 == 0):
                    console.print(f"  id: {seq:<3} event: {kind:<22} {payload[:60]}", highlight=False, soft_wrap=True)
                if kind == "progress" and len(seqs) > 20 and not killed_at:
                    step("8. kill -9 node-1's agentd mid-run: the lease expires, the janitor resumes the run elsewhere")
                    cluster.kill_daemon(node1.agentd)
                    killed_at = time.monotonic()
                elif killed_at and not resumed_after and kind == "run.executor_acquired":
                    resumed_after = time.monotonic() - killed_at
                event = {}
    async with RunClient(node2.agentd.endpoint) as runs:
        run = await runs.get("demo-run")
        verdict = await runs.verify("demo-run")
    gap_free = seqs == list(range(1, len(seqs) + 1))
    console.print(f"run {run.status} on {run.executor.node_id or 'the new executor'} after {run.counters.recoveries} "
                  f"recovery ({resumed_after:.1f} s from the kill to the takeover); the stream from node-2 got seqs "
                  f"1..{seqs[-1]} {'with no gap and no duplicate' if gap_free else 'WITH A GAP'}; "
                  f"hash chain verified: {verdict.ok}")
    cluster.restart_daemon(node1.agentd)
