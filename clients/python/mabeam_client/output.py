"""How meshctl prints: rich tables and text for people, JSON with ``--json`` (shared by every command module)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

console = Console()


def to_dict(message: Any) -> dict[str, Any]:
    """A protobuf message as plain JSON-able data (field names as in the proto)."""
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def emit(args: argparse.Namespace, data: Any, table: Table | None = None, text: str | None = None) -> None:
    """Print `data` as JSON with --json, else the table or text."""
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif table is not None:
        console.print(table)
    elif text is not None:
        console.print(text)
