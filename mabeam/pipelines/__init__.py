"""Pipeline files: the published JSON Schema, the checker and the sandboxed templates (pure, shared).

Shared because both sides need it: ``meshctl pipeline validate`` checks a file
on the user's machine without a daemon, and agentd checks it again before it
runs (``agentd.pipelines`` is the executor). See docs/pipelines.md.
"""

from mabeam.pipelines.spec import SCHEMA, Pipeline, PipelineError, Problem, load_pipeline, parse_pipeline

__all__ = ["SCHEMA", "Pipeline", "PipelineError", "Problem", "load_pipeline", "parse_pipeline"]
