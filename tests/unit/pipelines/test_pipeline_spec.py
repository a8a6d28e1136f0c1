"""Pipeline files are refused before they run, each problem with its line, column and field."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from mabeam.pipelines.spec import SCHEMA, PipelineError, load_pipeline, parse_pipeline

GOOD = """\
version: 1
name: research
inputs:
  question: {type: string}
  topics: {type: array, default: [a, b]}
defaults:
  model: small
  retry: {attempts: 2, backoff: 0.1}
steps:
  - id: outline
    kind: model
    prompt: "Outline: ${{ inputs.question }}"
  - id: search
    kind: tool
    tool: web_search
    args: {query: "${{ steps.outline.output }}"}
  - id: summaries
    kind: model
    needs: [outline]
    parallel: {over: "${{ inputs.topics }}", as: topic, max_parallel: 4, batch_size: 2}
    prompt: "Summarise ${{ topic }} given ${{ steps.outline.output }}"
    fallback: {kind: model, model: large, prompt: "again ${{ topic }}"}
output: {search: "${{ steps.search.output }}", summaries: "${{ steps.summaries.output }}"}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PipelineError) as caught:
        parse_pipeline(text, source="p.yaml")
    return str(caught.value).splitlines()


def test_a_good_file_is_typed() -> None:
    pipeline = parse_pipeline(GOOD)
    assert [s.id for s in pipeline.steps] == ["outline", "search", "summaries"]
    assert pipeline.step("search").needs == ("outline",)  # default: the step before
    assert pipeline.step("summaries").needs == ("outline",)
    summaries = pipeline.step("summaries")
    assert summaries.parallel is not None and summaries.parallel.name == "topic"
    assert summaries.parallel.batch_size == 2 and summaries.parallel.max_parallel == 4
    assert summaries.body.fields["model"] == "small" and summaries.body.retry.attempts == 2
    assert summaries.fallback is not None and summaries.fallback.fields["model"] == "large"
    assert pipeline.resolve_inputs({"question": "q"}) == {"question": "q", "topics": ["a", "b"]}
    with pytest.raises(ValueError, match="needs input"):
        pipeline.resolve_inputs({})
    with pytest.raises(ValueError, match="no input"):
        pipeline.resolve_inputs({"question": "q", "bogus": 1})


def test_schema_errors_name_line_column_and_field() -> None:
    text = GOOD.replace("    kind: tool\n", "    kind: tol\n").replace("  - id: outline\n", "  - id: outline\n    colour: red\n")
    lines = problems(text)
    assert any(line.startswith("p.yaml:10:5: steps[0]: unknown field(s)") and "colour" in line for line in lines)
    assert any(line.startswith("p.yaml:15:11: steps[1].kind: 'tol' is not one of") for line in lines)


def test_missing_required_fields_per_kind() -> None:
    text = "version: 1\nname: p\nsteps:\n  - id: a\n    kind: tool\n  - id: b\n    kind: agent\n    agent: x\n"
    lines = problems(text)
    assert "p.yaml:4:5: steps[0]: 'tool' is a required property" in lines
    assert "p.yaml:6:5: steps[1]: 'message' is a required property" in lines


def test_semantic_problems() -> None:
    text = """\
version: 1
name: p
steps:
  - id: a
    kind: model
    prompt: x
  - id: a
    kind: model
    prompt: y
  - id: b
    kind: model
    needs: [nope]
    prompt: "${{ steps.a.output }}"
  - id: c
    kind: model
    needs: []
    prompt: "${{ steps.a.output }} ${{ steps.ghost.output }}"
  - id: d
    kind: model
    prompt: "${{ steps.d.output }} ${{ 1 + }}"
"""
    lines = problems(text)
    assert "p.yaml:7:9: steps[1].id: duplicate step id 'a' (first at steps[0])" in lines
    assert "p.yaml:12:13: steps[2].needs[0]: unknown step 'nope' (steps: a)" in lines
    assert "p.yaml:13:13: steps[2].prompt: reads steps.a but does not wait for it; add 'a' to needs" in lines
    assert "p.yaml:17:13: steps[3].prompt: reads steps.a but does not wait for it; add 'a' to needs" in lines
    assert "p.yaml:17:13: steps[3].prompt: unknown step 'ghost' in a template" in lines
    assert any(line.startswith("p.yaml:20:13: steps[4].prompt: expression '1 +' does not parse") for line in lines)


def test_yaml_level_problems() -> None:
    assert problems("version: 1\nname: [unclosed\n")[0].startswith("p.yaml:3:1: YAML:")
    assert problems("")[0] == "p.yaml:1:1: the file is empty"
    dup = problems("version: 1\nname: p\nname: q\nsteps: [{id: a, kind: model, prompt: x}]\n")
    assert "p.yaml:3:1: duplicate key 'name'" in dup
    # PyYAML's safe loader: a tag that would build a Python object is refused, never executed.
    assert problems("version: 1\nname: !!python/object/apply:os.system [echo hi]\nsteps: []\n")[0].startswith(
        "p.yaml:2:7: YAML:")


def test_file_limits(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1 << 20 + 1))
    with pytest.raises(PipelineError, match="limit"):
        load_pipeline(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(PipelineError, match="UTF-8"):
        load_pipeline(binary)


def test_published_schema_is_valid_and_shipped() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    shipped = Path(__file__).parents[3] / "mabeam" / "pipelines" / "pipeline.schema.json"
    assert json.loads(shipped.read_text()) == SCHEMA
