"""JSON values as ``google.protobuf.Struct`` / ``ListValue`` and back: the structured twins of ``*_json`` fields.

The contract carries mechanism configs, events and actions both as JSON text
and as protobuf structured values, so a client in any language can skip the
JSON parsing. Struct numbers are doubles, so :func:`from_struct` and
:func:`from_list` turn integral numbers back into ``int`` (mabeam's amounts and
times are integers); integers beyond 2**53 are exact only in the JSON text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2

#: The largest integer a double holds exactly.
EXACT_INT = 2**53


def _number(value: float) -> int | float:
    return int(value) if value.is_integer() and abs(value) <= EXACT_INT else value


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return from_list(value.list_value)
    if kind == "number_value":
        return _number(value.number_value)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict (integral numbers as ``int``)."""
    return {key: _value(item) for key, item in struct.fields.items()}


def from_list(values: struct_pb2.ListValue) -> list[Any]:
    """A ListValue as a plain list (integral numbers as ``int``)."""
    return [_value(item) for item in values.values]


def to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """A JSON object as a Struct."""
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def to_list(values: Sequence[Any]) -> struct_pb2.ListValue:
    """A JSON array as a ListValue."""
    listed = struct_pb2.ListValue()
    listed.extend(values)
    return listed
