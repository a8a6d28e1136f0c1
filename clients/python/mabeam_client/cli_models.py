"""``meshctl model list | complete | stream``: chat models through an agentd's ModelService.

The agentd address comes from ``--agentd``, else ``$MABEAM_AGENTD``, else
``127.0.0.1:7300``. ``complete`` prints the answer and a receipt line (``--json``:
the whole response); ``stream`` prints tokens as they arrive.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from mabeam_client.models import ModelClient

DEFAULT_AGENTD = "127.0.0.1:7300"


def _address(args: argparse.Namespace) -> str:
    return args.agentd or os.environ.get("MABEAM_AGENTD") or DEFAULT_AGENTD


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {"system": args.system, "temperature": args.temperature, "max_tokens": args.max_tokens,
            "tenant": args.tenant, "run_id": args.run_id, "cache": args.cache, "json_mode": args.json_mode,
            "timeout": args.timeout}


def _receipt_line(receipt: Any) -> str:
    return (f"[{receipt.provider}/{receipt.model} via {receipt.route}: {receipt.usage.input_tokens} in, "
            f"{receipt.usage.output_tokens} out, ${receipt.cost_nusd / 1e9:.6f}, {receipt.attempts} attempt(s), "
            f"{' -> '.join(receipt.path)}{', cache hit' if receipt.cache_hit else ''}, "
            f"{receipt.latency_seconds * 1000:.0f} ms]")


async def cmd_model_list(args: argparse.Namespace) -> int:
    """Models and routes as tables (or JSON)."""
    async with ModelClient(_address(args)) as client:
        listing = await client.list_models()
    if getattr(args, "json", False):
        print(json.dumps(MessageToDict(listing, preserving_proto_field_name=True), indent=2, sort_keys=True))
        return 0
    table = Table("MODEL", "PROVIDER", "PROVIDER MODEL", "KIND", "$/1K IN", "$/1K OUT", "MAX OUT", "BREAKER",
                  title="models")
    for m in listing.models:
        table.add_row(m.name, m.provider, m.provider_model, m.provider_kind, f"{m.input_per_1k_usd:g}",
                      f"{m.output_per_1k_usd:g}", str(m.max_output_tokens), m.breaker_state)
    routes = Table("ROUTE", "PRIMARY", "FALLBACKS", title="routes")
    for r in listing.routes:
        routes.add_row(r.name, r.primary, ", ".join(r.fallbacks))
    console = Console()
    console.print(table)
    if listing.routes:
        console.print(routes)
    return 0


async def cmd_model_complete(args: argparse.Namespace) -> int:
    """One completion."""
    async with ModelClient(_address(args)) as client:
        reply = await client.complete(args.model, args.prompt, **_options(args))
    if getattr(args, "json", False):
        print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2, sort_keys=True))
        return 0
    print(reply.content)
    for call in reply.tool_calls:
        print(f"tool call {call.name}({call.arguments})")
    print(_receipt_line(reply.receipt), file=sys.stderr)
    return 0


async def cmd_model_stream(args: argparse.Namespace) -> int:
    """A streamed completion, printed as it arrives."""
    async with ModelClient(_address(args)) as client:
        async for event in client.stream(args.model, args.prompt, **_options(args)):
            kind = event.WhichOneof("event")
            if getattr(args, "json", False):
                print(json.dumps(MessageToDict(event, preserving_proto_field_name=True), sort_keys=True))
            elif kind == "text":
                print(event.text, end="", flush=True)
            elif kind == "tool_call":
                print(event.tool_call.arguments, end="", flush=True)
            elif kind in ("done", "failed"):
                print()
                print(_receipt_line(getattr(event, kind).receipt), file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``model list|complete|stream`` to meshctl."""
    model = sub.add_parser("model", help="chat models through agentd (list, complete, stream)")
    model.add_argument("--agentd", default=None, help=f"agentd gRPC HOST:PORT (default $MABEAM_AGENTD or "
                                                      f"{DEFAULT_AGENTD})")
    verbs = model.add_subparsers(dest="model_command", required=True)
    listing = verbs.add_parser("list", help="configured models, prices, breaker states and routes")
    listing.set_defaults(func=cmd_model_list)
    for name, func, text in (("complete", cmd_model_complete, "one completion, with its receipt"),
                             ("stream", cmd_model_stream, "a streamed completion")):
        p = verbs.add_parser(name, help=text)
        p.add_argument("model", help="a configured model or route")
        p.add_argument("prompt", help="the user message")
        p.add_argument("--system", default="", help="a system message")
        p.add_argument("--temperature", type=float, default=None)
        p.add_argument("--max-tokens", type=int, default=0)
        p.add_argument("--tenant", default="")
        p.add_argument("--run-id", default="")
        p.add_argument("--cache", action="store_true", help="use the response cache (temperature 0)")
        p.add_argument("--json-mode", action="store_true", help="ask for a JSON object")
        p.add_argument("--timeout", type=float, default=0.0, help="total deadline in seconds")
        p.set_defaults(func=func)
    for p in (listing, *(verbs.choices[n] for n in ("complete", "stream"))):
        # Also accepted after the verb; SUPPRESS keeps a value given before it.
        p.add_argument("--agentd", default=argparse.SUPPRESS, help="agentd gRPC HOST:PORT")
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
