"""Variables as a pure core: a JSON-schema subset checker and versioned compare-and-set.

A variable has a name, a schema, a JSON value and a version that grows by one
with every accepted write. ``compare_and_set`` refuses a write whose expected
version is not the current one (:class:`VersionMismatch`) or whose value does
not satisfy the schema (:class:`SchemaViolation`); nothing changes on refusal.

Schema subset (``jsonschema`` is not a dependency yet; this keeps the rules
explicit and small): ``type`` (``null``, ``boolean``, ``integer``, ``number``,
``string``, ``array``, ``object`` or a list of them), ``enum``, ``const``,
``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``,
``minLength``, ``maxLength``, ``pattern``, ``items``, ``minItems``,
``maxItems``, ``properties``, ``required``, ``additionalProperties`` (bool or
schema), plus annotation keywords (``title``, ``description``, ``$schema``,
``default``, ``examples``). Any other keyword is refused when the variable is
created, so a schema never silently means less than it says.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

MAX_VALUE_BYTES = 64 * 1024
MAX_SCHEMA_BYTES = 16 * 1024
DEFAULT_HISTORY = 100
MAX_HISTORY = 1000

_TYPES = {"null", "boolean", "integer", "number", "string", "array", "object"}
_ANNOTATIONS = {"title", "description", "$schema", "default", "examples", "$comment"}
_KEYWORDS = {"type", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
             "maxLength", "pattern", "items", "minItems", "maxItems", "properties", "required",
             "additionalProperties"} | _ANNOTATIONS


class VariableError(Exception):
    """A variable operation was refused; nothing changed."""


class SchemaInvalid(VariableError):
    """The schema itself is malformed or uses an unsupported keyword."""


class SchemaViolation(VariableError):
    """The value does not satisfy the variable's schema."""


class VersionMismatch(VariableError):
    """The expected version is not the current one (a stale compare-and-set)."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"expected version {expected} but the variable is at version {current}")
        self.expected = expected
        self.current = current


def check_schema(schema: Any, path: str = "schema") -> None:
    """Raise SchemaInvalid unless ``schema`` is an object in the supported subset."""
    if not isinstance(schema, dict):
        raise SchemaInvalid(f"{path} must be a JSON object")
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise SchemaInvalid(f"{path}: unsupported keyword(s) {sorted(unknown)}")
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or any(k not in _TYPES for k in kinds):
            raise SchemaInvalid(f"{path}.type must be one of {sorted(_TYPES)} or a list of them")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise SchemaInvalid(f"{path}.enum must be a list")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema and (not isinstance(schema[key], int | float) or isinstance(schema[key], bool)):
            raise SchemaInvalid(f"{path}.{key} must be a number")
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in schema and (not isinstance(schema[key], int) or isinstance(schema[key], bool) or schema[key] < 0):
            raise SchemaInvalid(f"{path}.{key} must be a non-negative integer")
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as error:
            raise SchemaInvalid(f"{path}.pattern is not a valid regular expression: {error}") from None
    if "items" in schema:
        check_schema(schema["items"], f"{path}.items")
    if "properties" in schema:
        if not isinstance(schema["properties"], dict):
            raise SchemaInvalid(f"{path}.properties must be an object")
        for name, sub in schema["properties"].items():
            check_schema(sub, f"{path}.properties.{name}")
    if "required" in schema and (not isinstance(schema["required"], list)
                                 or not all(isinstance(x, str) for x in schema["required"])):
        raise SchemaInvalid(f"{path}.required must be a list of strings")
    extra = schema.get("additionalProperties")
    if extra is not None and not isinstance(extra, bool):
        check_schema(extra, f"{path}.additionalProperties")


def _type_of(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number", "integer"} if value.is_integer() else {"number"}
    if isinstance(value, str):
        return {"string"}
    if isinstance(value, list):
        return {"array"}
    return {"object"}


def validate(value: Any, schema: dict[str, Any], path: str = "value") -> None:
    """Raise SchemaViolation (naming the path) unless ``value`` satisfies ``schema``."""
    kind = schema.get("type")
    if kind is not None:
        kinds = set(kind if isinstance(kind, list) else [kind])
        if not kinds & _type_of(value):
            raise SchemaViolation(f"{path}: expected {' or '.join(sorted(kinds))}, got {json.dumps(value)[:80]}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaViolation(f"{path}: {json.dumps(value)[:80]} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        raise SchemaViolation(f"{path}: must equal {json.dumps(schema['const'])}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaViolation(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaViolation(f"{path}: {value} is above the maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise SchemaViolation(f"{path}: {value} must be above {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            raise SchemaViolation(f"{path}: {value} must be below {schema['exclusiveMaximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            raise SchemaViolation(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SchemaViolation(f"{path}: longer than {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise SchemaViolation(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise SchemaViolation(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaViolation(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for index, item in enumerate(value):
                validate(item, schema["items"], f"{path}[{index}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise SchemaViolation(f"{path}: missing required property {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                validate(item, properties[name], f"{path}.{name}")
            elif extra is False:
                raise SchemaViolation(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, dict):
                validate(item, extra, f"{path}.{name}")


def parse_json(text: str, what: str, limit: int = MAX_VALUE_BYTES) -> Any:
    """Parse JSON text, raising VariableError with a readable message."""
    if len(text.encode()) > limit:
        raise VariableError(f"{what} is larger than {limit} bytes")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise VariableError(f"{what} is not valid JSON: {error.msg} at position {error.pos}") from None
    except RecursionError:
        raise VariableError(f"{what} is nested too deeply") from None


@dataclass(frozen=True, slots=True)
class VariableRecord:
    """One version of a variable, as stored."""

    tenant: str
    name: str
    schema: dict[str, Any]
    value: Any
    version: int
    updated_at_ms: int
    set_by: str = "client"
    history_limit: int = DEFAULT_HISTORY

    def to_json(self) -> bytes:
        """The stored form."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> VariableRecord:
        """Parse the stored form."""
        return cls(**json.loads(raw))


def create(tenant: str, name: str, schema: Any, value: Any, now_ms: int,
           history_limit: int = DEFAULT_HISTORY) -> VariableRecord:
    """Version 1 of a new variable, after checking the schema, the value and the history bound."""
    check_schema(schema)
    if not 1 <= history_limit <= MAX_HISTORY:
        raise VariableError(f"history_limit must be 1..{MAX_HISTORY}, got {history_limit}")
    validate(value, schema)
    return VariableRecord(tenant, name, schema, value, 1, now_ms, "client", history_limit)


def compare_and_set(current: VariableRecord, expected_version: int, value: Any, now_ms: int,
                    set_by: str = "client") -> VariableRecord:
    """The next version, or VersionMismatch / SchemaViolation with nothing changed."""
    if expected_version != current.version:
        raise VersionMismatch(expected_version, current.version)
    validate(value, current.schema)
    return replace(current, value=value, version=current.version + 1, updated_at_ms=now_ms, set_by=set_by)


def pruned_version(record: VariableRecord) -> int | None:
    """The history version that falls out of the bound when ``record`` is written (None: none)."""
    old = record.version - record.history_limit
    return old if old >= 1 else None


def extract(outcome: Any, field: str) -> Any:
    """The value at a dotted path in an outcome (``""`` is the whole outcome); KeyError if absent."""
    value = outcome
    for part in [p for p in field.split(".") if p]:
        if isinstance(value, list) and part.isdigit():
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value[part]
        else:
            raise KeyError(field)
    return value
