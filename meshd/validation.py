"""Validation of registry input: names, groups, tenants, ids and metadata (pure).

Identifiers never contain ``/`` because they become etcd key segments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mabeam.config import ID_RE, ID_RULE
from mabeam.errors import FieldViolation

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,127}$")
METADATA_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_METADATA_ENTRIES = 32
MAX_METADATA_BYTES = 4096
DEFAULT_TENANT = "default"

NAME_RULE = "1-128 characters of letters, digits and _.:@-, starting with a letter, digit or _"


def check_name(field: str, value: str, violations: list[FieldViolation]) -> None:
    """A registered name or group name."""
    if not value:
        violations.append(FieldViolation(field, "must not be empty"))
    elif len(value) > 128:
        violations.append(FieldViolation(field, f"is {len(value)} characters long; the limit is 128"))
    elif not NAME_RE.match(value):
        violations.append(FieldViolation(field, f"{value!r} is not a valid name: use {NAME_RULE}"))


def check_id(field: str, value: str, violations: list[FieldViolation], required: bool = True) -> None:
    """A node id, tenant id, role or similar identifier."""
    if not value:
        if required:
            violations.append(FieldViolation(field, "must not be empty"))
    elif len(value) > 64:
        violations.append(FieldViolation(field, f"is {len(value)} characters long; the limit is 64"))
    elif not ID_RE.match(value):
        violations.append(FieldViolation(field, f"{value!r} is not a valid id: use {ID_RULE}"))


def check_agent_id(field: str, value: str, violations: list[FieldViolation]) -> None:
    """An agent or endpoint id (same alphabet as names)."""
    if not value:
        violations.append(FieldViolation(field, "must not be empty"))
    elif len(value) > 128 or not NAME_RE.match(value):
        violations.append(FieldViolation(field, f"{value[:64]!r} is not a valid agent id: use {NAME_RULE}"))


def check_metadata(field: str, metadata: Mapping[str, str], violations: list[FieldViolation]) -> None:
    """At most 32 entries and 4 KiB in total; keys of [A-Za-z0-9_.-]."""
    if len(metadata) > MAX_METADATA_ENTRIES:
        violations.append(FieldViolation(field, f"has {len(metadata)} entries; the limit is {MAX_METADATA_ENTRIES}"))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > MAX_METADATA_BYTES:
        violations.append(FieldViolation(field, f"is {size} bytes; the limit is {MAX_METADATA_BYTES}"))
    for key in metadata:
        if not METADATA_KEY_RE.match(key):
            violations.append(FieldViolation(f"{field}[{key[:32]!r}]", "keys are 1-64 characters of letters, digits and _.-"))
            break


def tenant_or_default(tenant: str) -> str:
    """The tenant a request means: empty is "default"."""
    return tenant or DEFAULT_TENANT
