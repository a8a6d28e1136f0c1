"""``meshctl send | call | subscribe``: the data plane from the command line, over gRPC.

meshctl wires these in with ``add_commands(subparsers)``; each subcommand sets
``func`` to a callable taking the parsed namespace and returning an exit code.
Destinations: ``NAME`` (a registered name), ``agent:NODE/AGENT_ID``, ``group:GROUP``
(all members) or ``group1:GROUP`` (one member, round-robin). The meshd address
comes from ``--meshd``, else a global ``--address`` of meshctl, else
``$MABEAM_MESHD``, else ``127.0.0.1:7100``. Exit codes: 0 success, 2 usage, 1 any
RPC error (its status code name and message on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc

from mabeam.v1 import common_pb2, dataplane_pb2, mesh_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:7100"


def parse_destination(text: str) -> dict[str, Any]:
    """The ``to`` fields of a Send/Call request for a destination string (see the module docstring)."""
    if text.startswith("agent:"):
        node, _, agent = text.removeprefix("agent:").partition("/")
        if not agent:
            raise argparse.ArgumentTypeError("agent destinations look like agent:NODE/AGENT_ID")
        return {"to_agent": common_pb2.AgentRef(node_id=node, agent_id=agent)}
    if text.startswith("group1:"):
        return {"to_group": dataplane_pb2.GroupAddress(group=text.removeprefix("group1:"),
                                                       mode=dataplane_pb2.GROUP_MODE_ONE)}
    if text.startswith("group:"):
        return {"to_group": dataplane_pb2.GroupAddress(group=text.removeprefix("group:"),
                                                       mode=dataplane_pb2.GROUP_MODE_ALL)}
    return {"to_name": text}


_CHANNELS = {"control": 1, "high": 2, "normal": 3, "bulk": 4}


def _address(args: argparse.Namespace) -> str:
    return (getattr(args, "meshd", None) or getattr(args, "endpoint", None) or getattr(args, "address", None) or os.environ.get("MABEAM_MESHD")
            or DEFAULT_ADDRESS)


def _payload(args: argparse.Namespace) -> bytes:
    if args.payload == "-":
        return sys.stdin.buffer.read()
    return str(args.payload).encode()


def _render(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(payload).decode()


def _run(coro_factory: Callable[[mesh_pb2_grpc.MeshServiceStub], Any], args: argparse.Namespace) -> int:
    async def main() -> int:
        async with grpc.aio.insecure_channel(_address(args)) as channel:
            try:
                return int(await coro_factory(mesh_pb2_grpc.MeshServiceStub(channel)))
            except grpc.aio.AioRpcError as exc:
                print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 1

    return asyncio.run(main())


def cmd_send(args: argparse.Namespace) -> int:
    """``meshctl send DEST PAYLOAD``: prints the message id(s)."""
    request = dataplane_pb2.SendRequest(tenant=args.tenant, sender_agent_id=args.sender, payload=_payload(args),
                                        channel=_CHANNELS[args.channel], acknowledged=args.ack,
                                        **parse_destination(args.destination))

    async def go(stub: mesh_pb2_grpc.MeshServiceStub) -> int:
        response = await stub.Send(request, timeout=args.rpc_timeout)
        print(" ".join(str(i) for i in response.message_ids))
        return 0

    return _run(go, args)


def cmd_call(args: argparse.Namespace) -> int:
    """``meshctl call DEST PAYLOAD``: prints the reply payload."""
    request = dataplane_pb2.CallRequest(tenant=args.tenant, sender_agent_id=args.sender, payload=_payload(args),
                                        channel=_CHANNELS[args.channel], timeout_ms=int(args.timeout * 1000),
                                        **parse_destination(args.destination))

    async def go(stub: mesh_pb2_grpc.MeshServiceStub) -> int:
        response = await stub.Call(request, timeout=args.timeout + 1.0)
        print(_render(response.payload))
        return 0

    return _run(go, args)


def cmd_subscribe(args: argparse.Namespace) -> int:
    """``meshctl subscribe``: prints one JSON line per message (the first names the endpoint)."""
    request = dataplane_pb2.SubscribeRequest(tenant=args.tenant, agent_id=args.agent_id, names=args.name,
                                             groups=args.group)

    async def go(stub: mesh_pb2_grpc.MeshServiceStub) -> int:
        seen = 0
        stream = stub.Subscribe(request)
        async for response in stream:
            if response.HasField("endpoint"):
                ref = response.endpoint
                print(json.dumps({"endpoint": {"tenant": ref.tenant, "node_id": ref.node_id,
                                               "agent_id": ref.agent_id}}), flush=True)
                continue
            env = response.envelope
            print(json.dumps({"id": env.id, "kind": dataplane_pb2.MessageKind.Name(env.kind),
                              "channel": dataplane_pb2.Channel.Name(env.channel),
                              "from": f"{env.sender.node_id}/{env.sender.agent_id}",
                              "payload": _render(response.payload)}), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                stream.cancel()
                break
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
    send.add_argument("--channel", choices=sorted(_CHANNELS), default="normal")
    send.add_argument("--sender", default="", help="sending endpoint id on that meshd (default anonymous)")
    send.add_argument("--ack", action="store_true", help="acknowledged delivery")
    send.add_argument("--rpc-timeout", type=float, default=10.0)
    send.set_defaults(func=cmd_send)

    call = subparsers.add_parser("call", help="call through the data plane and print the reply")
    _common(call)
    call.add_argument("destination")
    call.add_argument("payload")
    call.add_argument("--channel", choices=sorted(_CHANNELS), default="normal")
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
