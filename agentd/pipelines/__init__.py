"""Declarative pipelines run durably: the executor (file checking lives in :mod:`mabeam.pipelines`).

:mod:`agentd.pipelines.executor` runs a checked pipeline — ordering, conditions,
parallel maps, timeouts, retries, fallbacks and sub-pipelines — with every step
memoized through the run. See docs/pipelines.md.
"""

from agentd.pipelines.executor import InMemoryMemo, PipelineExecutor, PipelineFailed, StepFailed

__all__ = ["InMemoryMemo", "PipelineExecutor", "PipelineFailed", "StepFailed"]
