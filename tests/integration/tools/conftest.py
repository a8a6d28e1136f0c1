"""The agent-work bed: two nodes (meshd + agentd) sharing one runs store, agentd configured with the local
model server, the example tools (their executions counted in a ledger file) and three LLM agent types."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from mabeam.dev.cluster import DevCluster
from mabeam.dev.fakellm.process import FakeLLMProcess

RUNS = {"lease_ttl": 2, "cancel_grace_s": 1.0, "janitor_interval_s": 1.0, "pending_grace_s": 1.0}
MODELS_PRICES = {"input_per_1k_usd": 0.0001, "output_per_1k_usd": 0.0002}


@pytest.fixture(scope="session")
def bed(etcd_server, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The cluster, the model server (``llm``: reset its script per test) and the tool ledger path."""
    tmp = tmp_path_factory.mktemp("work")
    ledger = tmp / "ledger.jsonl"
    ledger.touch()
    llm = FakeLLMProcess().start()
    models = {"providers": {"fake": {"kind": "openai", "base_url": llm.openai_base}},
              "models": {"helper-model": {"provider": "fake", "name": "fake-helper", **MODELS_PRICES}},
              "retry": {"max_attempts": 1}}
    agents = {
        "helper": {"model": "helper-model", "tools": ["weather", "add", "refund"],
                   "policy": [{"tool": "refund", "verdict": "ask", "reason": "refunds need a human"}],
                   "approval_timeout": 300},
        "hasty": {"model": "helper-model", "tools": ["refund"], "policy": [{"tool": "refund", "verdict": "ask"}],
                  "approval_timeout": 1},
        "payer": {"model": "helper-model", "tools": ["refund"]},
    }
    # The daemons' environment, not the test process's: set for the session it reached every agentd that
    # later tests started (tests/integration/models saw this bed's helper-model in its listing).
    env = {"AGENTD_MODELS": json.dumps(models), "AGENTD_LLM_AGENTS": json.dumps(agents),
           "MABEAM_TOOL_LEDGER": str(ledger)}
    cluster = DevCluster(2, etcd=etcd_server.endpoint, cluster=f"w{uuid.uuid4().hex[:10]}",
                         lease_ttl=2, agentd=True, runs_config=RUNS, env=env)
    try:
        cluster.start()
        yield {"cluster": cluster, "llm": llm, "ledger": ledger}
    finally:
        cluster.close()
        llm.close()
