"""Variables through a real coordinator: CAS on version, schema checks, ordered watch, bounded history, binding."""

from __future__ import annotations

import asyncio

import pytest

from mabeam_client.coordinator import CoordinatorClient
from mabeam_client.errors import Aborted, InvalidArgument


async def test_cas_schema_watch_and_history(coordinators) -> None:
    # A stale CAS is refused; a value against the schema is refused; a watcher sees every version in
    # order; the history keeps only the last history_limit versions.
    cluster = coordinators(1)
    async with CoordinatorClient(cluster.coordinator_endpoints) as coord:
        var = await coord.create_variable("budget", {"type": "integer", "minimum": 0}, 0, history_limit=5)
        assert var.version == 1
        seen: list[int] = []

        async def watch() -> None:
            async for version in coord.watch_variable("budget", from_version=1):
                seen.append(version.version)
                if version.version == 21:
                    return

        watcher = asyncio.create_task(watch())
        for i in range(20):
            var = await coord.set_variable("budget", i + 1, expected_version=var.version)
        with pytest.raises(Aborted) as stale:
            await coord.set_variable("budget", 99, expected_version=20)
        assert stale.value.reason == "VERSION_MISMATCH"
        with pytest.raises(InvalidArgument):
            await coord.set_variable("budget", -1, expected_version=21)
        await asyncio.wait_for(watcher, 10)
        assert seen == list(range(1, 22))
        current = await coord.get_variable("budget")
        assert (current.version, current.value) == (21, 20)
        history = await coord.variable_history("budget")
        assert [h.version for h in history] == [17, 18, 19, 20, 21]
        with pytest.raises(InvalidArgument):
            await coord.create_variable("bad", {"type": "integer", "oneOf": []}, 1)
        with pytest.raises(InvalidArgument):
            await coord.create_variable("bad", {"type": "strin"}, 1)


async def test_vote_outcome_sets_bound_variable(coordinators) -> None:
    # A vote bound to a variable writes its decision as the variable's next version when it concludes.
    cluster = coordinators(1)
    async with CoordinatorClient(cluster.coordinator_endpoints) as coord:
        await coord.create_variable("plan", {"type": ["string", "null"], "enum": ["x", "y", None]}, None)
        vote = await coord.create_vote({"rule": "majority", "options": ["x", "y"],
                                        "voters": {"a": 1, "b": 1, "c": 1}}, bind_variable="plan")
        for voter, choice in (("a", "y"), ("b", "y"), ("c", "x")):
            await coord.cast_vote(vote.id, {"type": "cast", "voter": voter, "choice": choice})
        closed = await coord.close_instance(vote.id)
        assert closed.state == "concluded"
        plan = await coord.get_variable("plan")
        assert (plan.version, plan.value, plan.set_by) == (2, "y", f"instance:{vote.id}")
