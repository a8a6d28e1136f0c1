"""Validation of run requests (pure): ids, types, sizes and JSON payloads, one rule each.

Each check adds to a dict of violations (field → what is wrong); :func:`raise_if`
turns a non-empty dict into one :class:`InvalidRunRequest` naming every bad field.
The gRPC service and the HTTP face validate with the same functions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from agentd.runs.model import POLICIES, InvalidRunRequest, canonical_json
from agentd.runs.state import RESERVED_PREFIXES
from mabeam.config import ID_RE, ID_RULE

#: Run and frame ids go into etcd keys and URLs: never "/".
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
RUN_ID_RULE = "1-128 characters of letters, digits and _.:-, starting with a letter, digit or _"
TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
TYPE_RULE = "1-64 characters of a-z, 0-9 and _.-, starting with a letter"
#: Largest JSON payload of a frame, an input, an emitted event or a checkpoint.
MAX_PAYLOAD = 1024 * 1024
MAX_LABELS = 32
MAX_LABELS_BYTES = 4096
MAX_REASON = 1024
Violations = dict[str, str]


def check_run_id(field: str, value: str, violations: Violations, required: bool = True) -> None:
    """A run or frame id."""
    if not value:
        if required:
            violations[field] = "must not be empty"
    elif len(value) > 128:
        violations[field] = f"is {len(value)} characters long; the limit is 128"
    elif not RUN_ID_RE.match(value):
        violations[field] = f"{value[:64]!r} is not valid: use {RUN_ID_RULE}"


def check_tenant(field: str, value: str, violations: Violations) -> None:
    """A tenant id (empty means "default")."""
    if value and not ID_RE.match(value):
        violations[field] = f"{value[:64]!r} is not a valid id: use {ID_RULE}"


def check_type(field: str, value: str, violations: Violations, agent_emitted: bool = False) -> None:
    """A frame or event type; an agent may not emit under the runtime's prefixes."""
    if not value:
        violations[field] = "must not be empty"
    elif not TYPE_RE.match(value):
        violations[field] = f"{value[:64]!r} is not a valid type: use {TYPE_RULE}"
    elif agent_emitted and value.startswith(RESERVED_PREFIXES):
        violations[field] = f"{value!r} uses a prefix reserved for the runtime ({', '.join(RESERVED_PREFIXES)})"


def check_policy(field: str, value: str, violations: Violations) -> None:
    """An input policy (empty means the agent type's default)."""
    if value and value not in POLICIES:
        violations[field] = f"{value!r} is not one of {', '.join(POLICIES)}"


def check_labels(field: str, labels: Mapping[str, str], violations: Violations) -> None:
    """At most 32 labels, 4 KiB in total, keys of [A-Za-z0-9_.-]."""
    size = sum(len(k.encode()) + len(v.encode()) for k, v in labels.items())
    if len(labels) > MAX_LABELS:
        violations[field] = f"has {len(labels)} entries; the limit is {MAX_LABELS}"
    elif size > MAX_LABELS_BYTES:
        violations[field] = f"is {size} bytes; the limit is {MAX_LABELS_BYTES}"
    elif any(not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key) for key in labels):
        violations[field] = "keys must be 1-64 characters of letters, digits and _.-"


def json_text(field: str, text: str, violations: Violations, default: Any = None) -> str | None:
    """The canonical JSON of a JSON text (empty means ``default``); None and a violation when bad."""
    if len(text) > MAX_PAYLOAD:
        violations[field] = f"is {len(text)} bytes; the limit is {MAX_PAYLOAD}"
        return None
    if not text:
        return canonical_json(default)
    try:
        return canonical_json(json.loads(text))
    except (json.JSONDecodeError, ValueError) as error:
        violations[field] = f"is not valid JSON ({error})"
        return None


def json_value(field: str, value: Any, violations: Violations) -> str | None:
    """The canonical JSON of a value an agent gave (payload, checkpoint); None and a violation when bad."""
    try:
        text = canonical_json(value)
    except (TypeError, ValueError) as error:
        violations[field] = f"is not JSON-serialisable ({error})"
        return None
    if len(text) > MAX_PAYLOAD:
        violations[field] = f"is {len(text)} bytes as JSON; the limit is {MAX_PAYLOAD}"
        return None
    return text


def raise_if(violations: Violations) -> None:
    """Raise one InvalidRunRequest naming every bad field."""
    if violations:
        raise InvalidRunRequest(violations)
