"""Deterministic ids, hashes, redaction and receipts for tool calls (pure; no I/O, no clock).

- :func:`tool_call_id` is the same for the same call in the same place of the same
  run, so a run replayed after a crash finds the task it already started.
- :func:`idempotency_key` is what a ``dedupe_reconcile_required`` tool passes to the
  outside system so that a second attempt is recognised there.
- :func:`summarize` is what goes back to the model: canonical JSON, secrets
  redacted by key name, cut to a byte budget with a marker saying how much was cut.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

#: Keys whose values never reach a model, a log or a receipt summary.
SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|api[-_]?key|authori[sz]ation|cookie|credential|private[-_]?key)",
                        re.IGNORECASE)
REDACTED = "[redacted]"


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal data always gives equal text (and hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(text: str | bytes) -> str:
    """The SHA-256 of ``text`` (UTF-8 when a str), as hex."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def tool_call_id(run_id: str, step_key: str, tool: str, arguments: Any) -> str:
    """A stable id for one tool call: the run, its place in the run, the tool and its arguments."""
    digest = sha256_hex(canonical_json([run_id, step_key, tool, arguments]))
    return f"tc_{digest[:24]}"


def idempotency_key(run_id: str, call_id: str) -> str:
    """The key a side-effecting tool hands to the outside world; equal across retries of one call."""
    return f"mabeam:{run_id}:{call_id}"


def redact(value: Any) -> Any:
    """A copy of ``value`` with the values of secret-looking keys replaced by ``[redacted]``."""
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and SECRET_KEY.search(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def summarize(value: Any, limit: int = 4000) -> str:
    """What a model gets back: redacted canonical JSON, at most ``limit`` UTF-8 bytes."""
    if limit < 64:
        raise ValueError("summary limit must be at least 64 bytes")
    text = value if isinstance(value, str) else canonical_json(redact(value))
    data = text.encode()
    if len(data) <= limit:
        return text
    marker_room = 48
    kept = data[: limit - marker_room].decode("utf-8", errors="ignore")
    return f"{kept}…[truncated {len(data) - len(kept.encode())} bytes]"


@dataclass(frozen=True, slots=True)
class ToolReceipt:
    """The record a finished tool task leaves in its run (the payload of a ``tool.receipt`` event)."""

    tool_call_id: str
    tool: str
    state: str
    settlement: str
    idempotency_key: str
    params_hash: str
    output_hash: str
    latency_ms: float
    attempts: int
    error_class: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        """As plain JSON data."""
        return asdict(self)
