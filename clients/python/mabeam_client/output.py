"""How meshctl prints: rich tables and text for people, JSON with ``--json`` (shared by every command module)."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

console = Console()


def render_bytes(payload: bytes) -> str:
    """Bytes as text: UTF-8 when they are, else ``base64:...``."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(payload).decode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return render_bytes(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def to_dict(value: Any) -> Any:
    """An SDK result (a dataclass of :mod:`mabeam_client.types`) or a protobuf message as JSON-able data."""
    if isinstance(value, Message):
        return MessageToDict(value, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    return _jsonable(value)


def emit(args: argparse.Namespace, data: Any, table: Table | None = None, text: str | None = None) -> None:
    """Print `data` as JSON with --json, else the table or text."""
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif table is not None:
        console.print(table)
    elif text is not None:
        console.print(text)
