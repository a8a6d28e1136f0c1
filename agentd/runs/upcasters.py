"""Upcasting (pure): old versions of an event's payload are brought to the current shape on read.

The log is never rewritten (the hash chain covers each event as stored); readers
see every event at its type's current version. An upcaster turns version ``v`` of
one type into ``v + 1``; :func:`upcast` applies them in a row. Raw reads (hash
verification) skip this.

Registered here:

- ``run.started`` 1 → 2: version 1 named the agent type ``agent`` and had no input
  policy (it was always "enqueue").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[Any], Any]

#: (type, from version) -> the function giving the payload at version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}

#: The version each event type is written at today (types not listed: 1).
CURRENT_VERSIONS: dict[str, int] = {"run.started": 2}


def upcaster(type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function as the upcaster of ``type_`` from ``from_version`` to the next version."""
    def register(func: Upcaster) -> Upcaster:
        UPCASTERS[(type_, from_version)] = func
        return func
    return register


def current_version(type_: str) -> int:
    """The version new events of this type are written at."""
    return CURRENT_VERSIONS.get(type_, 1)


def upcast(type_: str, version: int, payload: Any) -> tuple[int, Any]:
    """The payload at the newest version this reader knows, and that version."""
    while (step := UPCASTERS.get((type_, version))) is not None:
        payload = step(payload)
        version += 1
    return version, payload


@upcaster("run.started", 1)
def _run_started_v1(payload: Any) -> Any:
    if not isinstance(payload, dict):
        return payload
    upgraded = {key: value for key, value in payload.items() if key != "agent"}
    upgraded["agent_type"] = payload.get("agent", payload.get("agent_type", ""))
    upgraded.setdefault("input_policy", "enqueue")
    return upgraded
