"""Retention applied by the janitor on a real agentd: the retention floor rises, older cursors become stale."""

from __future__ import annotations

import pytest

from mabeam.dev.testing import async_wait_until
from mabeam_client.errors import FailedPrecondition
from mabeam_client.runs import RunClient


async def test_the_janitor_raises_the_retention_floor(dev_cluster):
    cluster = dev_cluster(nodes=1, agentd=True, runs_config={
        "lease_ttl": 2, "janitor_interval_s": 0.5, "history_ttl_s": 0.0, "payload_ttl_s": {"progress": 0.0}})
    async with RunClient(cluster.nodes[0].agentd.endpoint) as runs:
        await runs.start("tasker", {"steps": 3}, run_id="kept-short")  # handled, checkpointed; the run stays open

        async def floor() -> int:
            run = await runs.get("kept-short")
            return run.retention_floor if run.retention_floor > 1 else 0

        raised = await async_wait_until(floor, 30, what="the janitor raised the retention floor")
        with pytest.raises(FailedPrecondition) as stale:
            _ = [e async for e in runs.stream("kept-short", cursor=0, follow=False)]
        assert stale.value.reason == "STALE_CURSOR" and stale.value.metadata["retention_floor"] == str(raised)
        tail = [e async for e in runs.stream("kept-short", cursor=raised - 1, follow=False)]
        assert tail[0].seq == raised and [e.seq for e in tail] == list(range(raised, raised + len(tail)))
        await runs.append("kept-short", "f-2", "msg", {"steps": 1, "finish": True})
        events = [e async for e in runs.stream("kept-short", cursor=raised - 1)]
        assert events[-1].type == "run.completed"
        assert (await runs.verify("kept-short")).ok
