"""Codecs for agent state and for messages that cross a process boundary: msgpack or JSON, never pickle.

Values are plain data (None, bool, int, float, str, bytes (msgpack only), lists,
dicts with string keys) or pydantic models, which are encoded as their JSON-mode
dump. Decoding gives plain data back; an agent that declares ``state_model`` gets
its checkpoint validated into that model again.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import msgpack
from pydantic import BaseModel


class Codec(Protocol):
    """Turns plain data (and pydantic models) into bytes and back."""

    name: str

    def encode(self, value: Any) -> bytes:
        """Bytes for a value; TypeError for anything that is not plain data or a pydantic model."""
        ...

    def decode(self, data: bytes) -> Any:
        """The plain data the bytes encode."""
        ...


def _default(value: Any) -> Any:
    """Encode hook: pydantic models as JSON-mode dicts, tuples and sets as lists; nothing else."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__}: use plain data or a pydantic model")


class MsgpackCodec:
    """msgpack: compact, fast, carries bytes; the default."""

    name = "msgpack"

    def encode(self, value: Any) -> bytes:
        """msgpack bytes for a value."""
        return msgpack.packb(value, default=_default, use_bin_type=True)  # type: ignore[no-any-return]

    def decode(self, data: bytes) -> Any:
        """The value msgpack bytes encode (strict map keys off so int keys survive)."""
        return msgpack.unpackb(data, raw=False, strict_map_key=False)


class JsonCodec:
    """JSON: readable in the SQLite store with any tool; no bytes."""

    name = "json"

    def encode(self, value: Any) -> bytes:
        """UTF-8 JSON for a value."""
        return json.dumps(value, default=_default, separators=(",", ":")).encode()

    def decode(self, data: bytes) -> Any:
        """The value UTF-8 JSON encodes."""
        return json.loads(data)


CODECS: dict[str, Codec] = {"msgpack": MsgpackCodec(), "json": JsonCodec()}


def codec(name: str) -> Codec:
    """A codec by name ("msgpack" or "json"); ValueError otherwise."""
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}") from None


def restore(value: Any, model: type[BaseModel] | None) -> Any:
    """Decoded data as the agent's declared ``state_model``, or unchanged when it declares none."""
    if model is None or value is None:
        return value
    return model.model_validate(value)
