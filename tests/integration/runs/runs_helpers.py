"""Helpers of the durable-runs tests: parsing Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Server-Sent Events from text lines: dicts with id, event and data (parsed JSON, or the raw text)."""
    event: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if "data" in event:
                try:
                    event["data"] = json.loads(event["data"])
                except ValueError:
                    pass
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            event["data"] = event["data"] + "\n" + value if "data" in event else value
        elif field in ("id", "event"):
            event[field] = value
