"""Hypothesis strategies for any protobuf message, from its descriptor: well-formed, oversized and broken bytes.

``request_bytes(descriptor)`` draws the bytes of one request: a message built
field by field (random values of the field's type, strings and lists far over
any limit, unknown enum values, unset fields), then sometimes broken — a
string field with invalid UTF-8, random bytes, a valid message with bytes
flipped or cut. Everything the contract declares is reachable, so a new field
or a new RPC is fuzzed without a line here.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

F = FieldDescriptor
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1), F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}
#: Strings that mean something somewhere (ids, kinds, the default tenant) among the random ones.
WORDS = ["", "default", "node-1", "sealed", "vote", "echo", "counter", "a", "../x", "x" * 129, "\x00", "é☃"]
BIG = 300_000  # well over every field limit, well under gRPC's 4 MiB message limit


def _text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(WORDS), st.text(max_size=24), st.just("y" * BIG))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == F.TYPE_STRING:
        return _text()
    if kind == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=32), st.just(b"\xc0"), st.just(b"z" * BIG))
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(width=32 if kind == F.TYPE_FLOAT else 64)
    if kind == F.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-3, 99))  # proto3 enums are open: unknown values too
    low, high = INT_RANGES[kind]
    return st.one_of(st.integers(low, high), st.sampled_from([0, 1, -1 if low < 0 else 2, high]))


def _filler(field: FieldDescriptor) -> Any:
    """A small valid value of the field's type (what an oversized list repeats)."""
    if field.type == F.TYPE_MESSAGE:
        return message_factory.GetMessageClass(field.message_type)()
    return {F.TYPE_STRING: "a", F.TYPE_BYTES: b"a", F.TYPE_BOOL: True, F.TYPE_DOUBLE: 1.0,
            F.TYPE_FLOAT: 1.0}.get(field.type, 1)


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of ``descriptor``'s type with any subset of fields set (nested up to three levels)."""
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 2:
        return st.just(cls())
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            optional[field.name] = st.dictionaries(_scalar(key), _value(value, depth), max_size=4)
        elif field.is_repeated:
            element = _value(field, depth)
            # Oversized lists repeat one small element (drawing 2000 distinct ones is slow and adds nothing).
            optional[field.name] = st.one_of(st.lists(element, max_size=4), st.just([_filler(field)] * 2000))
        else:
            optional[field.name] = _value(field, depth)
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, descriptor, values))


def _build(cls: Any, descriptor: Descriptor, values: dict[str, Any]) -> Any:
    message = cls()
    for name, value in values.items():
        field = descriptor.fields_by_name[name]
        target = getattr(message, name) if field.is_repeated or field.type == F.TYPE_MESSAGE else None
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if field.message_type.fields_by_name["value"].type == F.TYPE_MESSAGE:
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            if field.type == F.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.type == F.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def _bad_utf8(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """A string field (when the message has one) holding bytes that are not UTF-8."""
    strings = [f.number for f in descriptor.fields if f.type == F.TYPE_STRING]
    if not strings:
        return st.just(b"\x0a\x02\xff\xfe")
    return st.sampled_from(strings).map(lambda number: _varint(number << 3 | 2) + b"\x03\xff\xfe\xc0")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _mutate(data: bytes, draw: Any) -> bytes:
    if not data:
        return draw(st.binary(min_size=1, max_size=16))
    how = draw(st.sampled_from(["flip", "cut", "insert"]))
    at = draw(st.integers(0, len(data) - 1))
    if how == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if how == "cut":
        return data[:at]
    return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]


def request_bytes(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """The bytes of one request: well-formed (often oversized), invalid UTF-8, random, or a mutated valid one."""
    built = messages(descriptor).map(lambda m: m.SerializeToString())

    @st.composite
    def mutated(draw: Any) -> bytes:
        return _mutate(draw(built), draw)

    return st.one_of(built, built, _bad_utf8(descriptor), st.binary(max_size=64), mutated())
