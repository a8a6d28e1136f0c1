"""A hypothesis state machine over real agentd processes sharing one store: appends, duplicate frames,
cancels, kill -9 of the executing agentd and stream reconnects to any node, in any interleaving.

Invariants: a duplicate frame is answered with the original seq and appends nothing; every stream, from
any cursor on any node, is gap-free and agrees with every other read of the log; at the end every run has
ended, every accepted frame was received once and handled at most once (exactly once unless the run was
canceled first), and every step was done and reported once. I/O-bound: no deadline, few examples.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from mabeam_client.errors import FailedPrecondition
from mabeam_client.runs import RunClient

RUNS_CONFIG = {"lease_ttl": 2, "cancel_grace_s": 1.0, "janitor_interval_s": 1.0, "pending_grace_s": 1.0}


def test_runs_state_machine(dev_cluster):
    cluster = dev_cluster(nodes=3, agentd=True, runs_config=RUNS_CONFIG)
    loop = asyncio.new_event_loop()

    def run(coro):  # type: ignore[no-untyped-def]
        return loop.run_until_complete(coro)

    class Runs(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            async def clients() -> list[RunClient]:  # gRPC channels belong to the loop they are made on
                return [RunClient([n.agentd.endpoint for n in cluster.nodes[i:] + cluster.nodes[:i]])
                        for i in range(len(cluster.nodes))]

            self.clients = run(clients())
            self.runs: dict[str, dict] = {}  # run_id -> {frames: {id: seq}, canceled: bool}
            self.hashes: dict[tuple[str, int], str] = {}
            self.crashes = 0

        def teardown(self) -> None:
            try:
                run(self._finish_all())
            finally:
                for client in self.clients:
                    run(client.close())

        # --- rules ----------------------------------------------------------------------------

        @precondition(lambda self: len(self.runs) < 3)
        @rule(node=st.integers(0, 2), steps=st.integers(1, 3))
        def start(self, node: int, steps: int) -> None:
            run_id = f"sm-{uuid.uuid4().hex[:10]}"
            started = run(self.clients[node].start("tasker", {"steps": steps, "delay": 0.02}, run_id=run_id))
            assert started.created
            self.runs[run_id] = {"frames": {"input": 2}, "canceled": False}

        @precondition(lambda self: self.runs)
        @rule(data=st.data(), node=st.integers(0, 2), steps=st.integers(1, 3))
        def append(self, data: st.DataObject, node: int, steps: int) -> None:
            run_id = data.draw(st.sampled_from(sorted(self.runs)))
            state = self.runs[run_id]
            frame_id = f"f{len(state['frames'])}"
            try:
                result = run(self.clients[node].append(run_id, frame_id, "msg", {"steps": steps, "delay": 0.02}))
            except FailedPrecondition as error:
                assert state["canceled"] and error.reason == "RUN_TERMINAL"
                return
            assert not state["canceled"] and not result.duplicate
            state["frames"][frame_id] = result.seq

        @precondition(lambda self: self.runs)
        @rule(data=st.data(), node=st.integers(0, 2))
        def duplicate(self, data: st.DataObject, node: int) -> None:
            run_id = data.draw(st.sampled_from(sorted(self.runs)))
            frames = self.runs[run_id]["frames"]
            frame_id = data.draw(st.sampled_from(sorted(f for f in frames if f != "input") or ["none"]))
            if frame_id == "none":
                return
            events = run(self._read(run_id, 0, node))
            original = next(e for e in events if e.type == "frame.received"
                            and json.loads(e.payload_json)["frame_id"] == frame_id)
            payload = json.loads(original.payload_json)["payload"]
            result = run(self.clients[node].append(run_id, frame_id, "msg", payload))
            assert result.duplicate and result.seq == frames[frame_id]

        @precondition(lambda self: self.runs)
        @rule(data=st.data(), node=st.integers(0, 2))
        def cancel(self, data: st.DataObject, node: int) -> None:
            run_id = data.draw(st.sampled_from(sorted(self.runs)))
            result = run(self.clients[node].cancel(run_id, "stateful test"))
            assert result.duplicate == self.runs[run_id]["canceled"] or result.duplicate
            self.runs[run_id]["canceled"] = True

        @precondition(lambda self: self.runs and self.crashes < 2)
        @rule(data=st.data())
        def crash_executor(self, data: st.DataObject) -> None:
            run_id = data.draw(st.sampled_from(sorted(self.runs)))
            snapshot = run(self.clients[0].get(run_id))
            node = next((n for n in cluster.nodes if n.node_id == snapshot.executor.node_id), None)
            if node is None or snapshot.status not in ("running", "pending"):
                return
            self.crashes += 1
            cluster.kill_daemon(node.agentd)  # kill -9 the executing agentd (its lease expires in TTL)
            cluster.restart_daemon(node.agentd)

        @precondition(lambda self: self.runs)
        @rule(data=st.data(), node=st.integers(0, 2))
        def reconnect(self, data: st.DataObject, node: int) -> None:
            run_id = data.draw(st.sampled_from(sorted(self.runs)))
            known = max((seq for (r, seq) in self.hashes if r == run_id), default=0)
            cursor = data.draw(st.integers(0, known))
            events = run(self._read(run_id, cursor, node))
            assert [e.seq for e in events] == list(range(cursor + 1, cursor + 1 + len(events)))

        # --- helpers ----------------------------------------------------------------------------

        async def _read(self, run_id: str, cursor: int, node: int) -> list:
            events = [e async for e in self.clients[node].stream(run_id, cursor=cursor, follow=False)]
            for event in events:  # the log never changes: every read agrees with every earlier one
                assert self.hashes.setdefault((run_id, event.seq), event.hash) == event.hash
            return events

        async def _finish_all(self) -> None:
            for run_id, state in self.runs.items():
                if not state["canceled"]:
                    try:
                        await self.clients[0].append(run_id, "finish", "finish", None)
                    except FailedPrecondition:
                        pass
                async with asyncio.timeout(120):
                    events = [e async for e in self.clients[1].stream(run_id, follow=True)]
                for event in events:
                    assert self.hashes.setdefault((run_id, event.seq), event.hash) == event.hash
                check(events, state)

    def check(events: list, state: dict) -> None:
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].type in ("run.completed", "run.canceled")
        received = Counter(json.loads(e.payload_json)["frame_id"] for e in events if e.type == "frame.received")
        handled = Counter(json.loads(e.payload_json)["frame_id"] for e in events if e.type == "frame.handled")
        assert all(count == 1 for count in received.values()) and all(count == 1 for count in handled.values())
        assert set(state["frames"]) <= set(received)
        if events[-1].type == "run.completed":
            assert set(handled) == set(received)
        steps = Counter((p["frame_seq"], p["key"]) for e in events if e.type == "step.completed"
                        for p in [json.loads(e.payload_json)] if p["authoritative"])
        assert all(count == 1 for count in steps.values())
        progress = Counter((p["frame"], p["step"]) for e in events if e.type == "progress"
                           for p in [json.loads(e.payload_json)])
        assert all(count == 1 for count in progress.values())

    try:
        run_state_machine_as_test(Runs, settings=settings(
            max_examples=4, stateful_step_count=10, deadline=None, derandomize=False,
            suppress_health_check=list(HealthCheck)))
    finally:
        loop.close()


pytestmark = pytest.mark.timeout(900)
