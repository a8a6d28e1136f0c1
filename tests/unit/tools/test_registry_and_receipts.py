"""Tool definitions (schemas from signatures, argument validation, output serialisation) and receipts."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from agentd.tools.receipts import canonical_json, idempotency_key, redact, summarize, tool_call_id
from agentd.tools.registry import (
    Settlement,
    ToolArgumentError,
    ToolOutputError,
    ToolRegistry,
    UnknownTool,
    tool,
)


class Forecast(BaseModel):
    city: str
    celsius: float


@tool(timeout=5, settlement="dedupe_reconcile_required")
async def weather(city: str, unit: Literal["c", "f"] = "c", days: int = 1) -> Forecast:
    """Current temperature in a city.

    Longer text that the model does not need.
    """
    return Forecast(city=city, celsius=21.5)


@tool
async def slow_report(topic: str, progress=None) -> dict:  # noqa: ANN001 - progress is the runtime's callable
    """A tool that streams progress."""
    return {"topic": topic}


@tool(name="bad.output")
async def bad_output() -> object:
    """Returns something with no JSON form."""
    return object()


def test_schema_from_signature() -> None:
    schema = weather.schema()
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "weather" and fn["description"] == "Current temperature in a city."
    params = fn["parameters"]
    assert params["required"] == ["city"]
    assert params["properties"]["unit"]["enum"] == ["c", "f"]
    assert params["additionalProperties"] is False
    assert weather.settlement is Settlement.DEDUPE_RECONCILE_REQUIRED and weather.timeout == 5


def test_progress_parameter_is_not_part_of_the_schema() -> None:
    assert slow_report.streams_progress
    assert "progress" not in slow_report.schema()["function"]["parameters"]["properties"]


def test_arguments_are_validated_with_the_failing_fields_named() -> None:
    assert weather.parse_arguments('{"city": "Oslo"}').city == "Oslo"  # type: ignore[attr-defined]
    with pytest.raises(ToolArgumentError) as caught:
        weather.parse_arguments({"city": 3, "unit": "k", "extra": 1})
    assert set(caught.value.violations) == {"city", "unit", "extra"}
    with pytest.raises(ToolArgumentError, match="not JSON"):
        weather.parse_arguments("{city")
    with pytest.raises(ToolArgumentError, match="object"):
        weather.parse_arguments("[1, 2]")


def test_output_is_dumped_as_json_or_refused() -> None:
    assert weather.dump_output(Forecast(city="Oslo", celsius=1.0)) == {"city": "Oslo", "celsius": 1.0}
    with pytest.raises(ToolOutputError, match="no JSON form"):
        bad_output.dump_output(object())


def test_registry_lookup_and_schemas() -> None:
    registry = ToolRegistry([weather, slow_report])
    assert registry.names() == ["slow_report", "weather"]
    assert [s["function"]["name"] for s in registry.schemas()] == ["slow_report", "weather"]
    with pytest.raises(UnknownTool, match="available: slow_report, weather"):
        registry.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.add(weather)


def test_definition_errors() -> None:
    def sync_fn(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="async"):
        tool(sync_fn)
    with pytest.raises(ValueError, match="tool name"):
        tool(name="has space")(weather.function)


def test_call_ids_are_deterministic_and_sensitive_to_every_part() -> None:
    base = tool_call_id("run-1", "step-3", "weather", {"city": "Oslo", "days": 1})
    assert base == tool_call_id("run-1", "step-3", "weather", {"days": 1, "city": "Oslo"})
    others = {tool_call_id("run-2", "step-3", "weather", {"city": "Oslo", "days": 1}),
              tool_call_id("run-1", "step-4", "weather", {"city": "Oslo", "days": 1}),
              tool_call_id("run-1", "step-3", "forecast", {"city": "Oslo", "days": 1}),
              tool_call_id("run-1", "step-3", "weather", {"city": "Bergen", "days": 1})}
    assert base not in others and len(others) == 4
    assert idempotency_key("run-1", base) == f"mabeam:run-1:{base}"


def test_redaction_and_bounded_summaries() -> None:
    data = {"user": "ann", "api_key": "sk-123", "nested": [{"Authorization": "Bearer x", "ok": 1}],
            "password": "p"}
    assert redact(data) == {"user": "ann", "api_key": "[redacted]", "password": "[redacted]",
                            "nested": [{"Authorization": "[redacted]", "ok": 1}]}
    assert "sk-123" not in summarize(data)
    long = {"text": "é" * 10_000}
    summary = summarize(long, limit=200)
    assert len(summary.encode()) <= 200 and "truncated" in summary
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
