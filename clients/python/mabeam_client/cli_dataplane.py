"""``meshctl send | call | subscribe``: the data plane from the command line, over gRPC.

meshctl wires these in with ``add_commands(subparsers)``; each subcommand sets
``func`` to a callable taking the parsed namespace and returning an exit code.
Destinations: ``NAME`` (a registered name), ``agent:NODE/AGENT_ID``, ``group:GROUP``
(all members) or ``group1:GROUP`` (one member, round-robin). The meshd address
comes from ``--meshd``, else a global ``--address`` of meshctl, else
``$MABEAM_MESHD``, else ``127.0.0.1:7100``. Everything goes through the SDK's
:class:`~mabeam_client.mesh.MeshClient`. Exit codes: 0 success, 2 usage, 1 any
RPC error (its status code name, message and reason on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from mabeam_client.errors import MabeamError
from mabeam_client.mesh import MeshClient
from mabeam_client.output import render_bytes
from mabeam_client.types import AgentRef, Delivery, Destination, Endpoint, GroupAddress

DEFAULT_ADDRESS = "127.0.0.1:7100"
CHANNELS = ("control", "high", "normal", "bulk")


def parse_destination(text: str) -> Destination:
    """The destination a string names (see the module docstring)."""
    if text.startswith("agent:"):
        node, _, agent = text.removeprefix("agent:").partition("/")
        if not agent:
            raise argparse.ArgumentTypeError("agent destinations look like agent:NODE/AGENT_ID")
        return AgentRef("", node, agent)
    if text.startswith("group1:"):
        return GroupAddress(text.removeprefix("group1:"), "one")
    if text.startswith("group:"):
        return GroupAddress(text.removeprefix("group:"), "all")
    return text


def _address(args: argparse.Namespace) -> str:
    return (getattr(args, "meshd", None) or getattr(args, "endpoint", None) or getattr(args, "address", None)
            or os.environ.get("MABEAM_MESHD") or DEFAULT_ADDRESS)


def _payload(args: argparse.Namespace) -> bytes:
    if args.payload == "-":
        return sys.stdin.buffer.read()
    return str(args.payload).encode()


def _run(body: Callable[[MeshClient], Awaitable[int]], args: argparse.Namespace) -> int:
    async def main() -> int:
        async with MeshClient(_address(args)) as mesh:
            try:
                return await body(mesh)
            except MabeamError as error:
                print(f"error: {error}" + (f" ({error.reason})" if error.reason else ""), file=sys.stderr)
                return 1

    return asyncio.run(main())


def cmd_send(args: argparse.Namespace) -> int:
    """``meshctl send DEST PAYLOAD``: prints the message id(s)."""
    to = parse_destination(args.destination)

    async def go(mesh: MeshClient) -> int:
        mesh.timeout = args.rpc_timeout
        ids = await mesh.send(to, _payload(args), tenant=args.tenant, sender=args.sender, channel=args.channel,
                              acknowledged=args.ack)
        print(" ".join(str(i) for i in ids))
        return 0

    return _run(go, args)


def cmd_call(args: argparse.Namespace) -> int:
    """``meshctl call DEST PAYLOAD``: prints the reply payload."""
    to = parse_destination(args.destination)

    async def go(mesh: MeshClient) -> int:
        reply = await mesh.call(to, _payload(args), timeout=args.timeout, tenant=args.tenant, sender=args.sender,
                                channel=args.channel)
        print(render_bytes(reply.payload))
        return 0

    return _run(go, args)


def _line(item: Endpoint | Delivery) -> dict[str, Any]:
    if isinstance(item, Endpoint):
        ref = item.ref
        return {"endpoint": {"tenant": ref.tenant, "node_id": ref.node_id, "agent_id": ref.agent_id}}
    return {"id": item.id, "kind": item.kind, "channel": item.channel,
            "from": f"{item.sender.node_id}/{item.sender.agent_id}", "payload": render_bytes(item.payload)}


def cmd_subscribe(args: argparse.Namespace) -> int:
    """``meshctl subscribe``: prints one JSON line per message (the first names the endpoint)."""

    async def go(mesh: MeshClient) -> int:
        seen = 0
        stream = mesh.subscribe(agent_id=args.agent_id, names=args.name, groups=args.group, tenant=args.tenant)
        try:
            async for item in stream:
                print(json.dumps(_line(item)), flush=True)
                if isinstance(item, Delivery):
                    seen += 1
                    if args.count and seen >= args.count:
                        break
        finally:
            await stream.aclose()
        return 0

    return _run(go, args)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--meshd", help=f"meshd gRPC address (default $MABEAM_MESHD or {DEFAULT_ADDRESS})")
    parser.add_argument("--tenant", default="", help="tenant (default: default)")


def add_commands(subparsers: Any) -> None:
    """Add ``send``, ``call`` and ``subscribe`` to meshctl's subparsers."""
    send = subparsers.add_parser("send", help="send a one-way message through the data plane")
    _common(send)
    send.add_argument("destination", help="NAME | agent:NODE/AGENT | group:GROUP | group1:GROUP")
    send.add_argument("payload", help="payload text, or - for stdin")
    send.add_argument("--channel", choices=CHANNELS, default="normal")
    send.add_argument("--sender", default="", help="sending endpoint id on that meshd (default anonymous)")
    send.add_argument("--ack", action="store_true", help="acknowledged delivery")
    send.add_argument("--rpc-timeout", type=float, default=10.0)
    send.set_defaults(func=cmd_send)

    call = subparsers.add_parser("call", help="call through the data plane and print the reply")
    _common(call)
    call.add_argument("destination")
    call.add_argument("payload")
    call.add_argument("--channel", choices=CHANNELS, default="normal")
    call.add_argument("--sender", default="")
    call.add_argument("--timeout", type=float, default=5.0, help="seconds")
    call.set_defaults(func=cmd_call)

    sub = subparsers.add_parser("subscribe", help="open an endpoint and print what it receives")
    _common(sub)
    sub.add_argument("--agent-id", default="", help="endpoint id (default generated)")
    sub.add_argument("--name", action="append", default=[], help="register this name (repeatable)")
    sub.add_argument("--group", action="append", default=[], help="join this group (repeatable)")
    sub.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    sub.set_defaults(func=cmd_subscribe)
