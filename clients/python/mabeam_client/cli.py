"""``meshctl``: inspect and drive a mabeam cluster through one meshd.

Human tables by default, ``--json`` for scripts. Subcommands of other areas
(agents, data plane, coordinator) plug in through modules exposing
``add_commands(subparsers)``; each command sets ``func(args) -> int`` (sync or
async) via ``set_defaults``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from mabeam_client.errors import MabeamError
from mabeam_client.mesh import MeshClient
from mabeam_client.output import emit, to_dict
from mabeam_client.security import ClientSecurity, set_default

DEFAULT_ENDPOINT = "127.0.0.1:7110"
PLUGINS = ("mabeam_client.cli_agents", "mabeam_client.cli_models", "mabeam_client.cli_dataplane",
           "mabeam_client.cli_coordinator", "mabeam_client.cli_runs", "mabeam_client.cli_pipelines",
           "mabeam_client.cli_security")
SECURITY_FLAGS = ("token", "token_file", "tls_ca", "tls_cert", "tls_key", "tls_server_name")

async def cmd_ping(args: argparse.Namespace) -> int:
    async with MeshClient(args.endpoint) as mesh:
        reply = await mesh.ping()
    data = {"node_id": reply.node.node_id, "grpc_address": reply.node.grpc_address,
            "version": reply.node.version, "etcd_connected": reply.etcd_connected}
    emit(args, data, text=f"pong from {data['node_id']} ({data['grpc_address']}, mabeam {data['version']}); "
                          f"etcd {'connected' if reply.etcd_connected else 'UNREACHABLE'}")
    return 0


async def cmd_members(args: argparse.Namespace) -> int:
    async with MeshClient(args.endpoint) as mesh:
        members = await mesh.members()
        leader = await mesh.leader()
    data = [to_dict(m) for m in members]
    table = Table("node_id", "grpc", "metrics", "version", "labels", "", title="members")
    for m in members:
        table.add_row(m.node_id, m.grpc_address, m.metrics_address, m.version,
                      ",".join(f"{k}={v}" for k, v in sorted(m.labels.items())),
                      "leader" if m.node_id == leader.node_id else "")
    emit(args, data, table)
    return 0


async def cmd_leader(args: argparse.Namespace) -> int:
    async with MeshClient(args.endpoint) as mesh:
        leader = await mesh.leader(args.role)
    data = {"role": leader.role, "node_id": leader.node_id, "address": leader.address, "term": leader.term}
    text = (f"{leader.role}: {leader.node_id} ({leader.address}), term {leader.term}" if leader.node_id
            else f"{leader.role}: no leader")
    emit(args, data, text=text)
    return 0


async def cmd_names(args: argparse.Namespace) -> int:
    async with MeshClient(args.endpoint) as mesh:
        entries = await mesh.names(args.tenant, args.prefix)
    table = Table("name", "node", "agent", "metadata", title=f"names ({args.tenant or 'default'})")
    for e in entries:
        table.add_row(e.name, e.target.node_id, e.target.agent_id,
                      ",".join(f"{k}={v}" for k, v in sorted(e.metadata.items())))
    emit(args, [to_dict(e) for e in entries], table)
    return 0


async def cmd_lookup(args: argparse.Namespace) -> int:
    async with MeshClient(args.endpoint) as mesh:
        entry = await mesh.lookup(args.name, args.tenant)
    emit(args, to_dict(entry), text=f"{entry.name} → agent {entry.target.agent_id} on node {entry.target.node_id}")
    return 0


async def cmd_groups(args: argparse.Namespace) -> int:
    async with MeshClient(args.endpoint) as mesh:
        if args.group:
            members = await mesh.group_members(args.group, args.tenant)
            table = Table("node", "agent", title=f"group {args.group}")
            for m in members:
                table.add_row(m.member.node_id, m.member.agent_id)
            emit(args, [to_dict(m) for m in members], table)
            return 0
        groups = await mesh.groups(args.tenant)
    table = Table("group", "members", title=f"groups ({args.tenant or 'default'})")
    for g in groups:
        table.add_row(g.group, str(g.member_count))
    emit(args, [to_dict(g) for g in groups], table)
    return 0


async def cmd_register(args: argparse.Namespace) -> int:
    metadata = dict(item.split("=", 1) for item in args.meta)
    async with MeshClient(args.endpoint) as mesh:
        entry = await mesh.register_name(args.name, args.agent_id, args.tenant, metadata)
    emit(args, to_dict(entry), text=f"registered {entry.name} → {entry.target.agent_id}@{entry.target.node_id}")
    return 0


async def cmd_unregister(args: argparse.Namespace) -> int:
    async with MeshClient(args.endpoint) as mesh:
        await mesh.unregister_name(args.name, args.tenant)
    emit(args, {"unregistered": args.name}, text=f"unregistered {args.name}")
    return 0


async def cmd_join(args: argparse.Namespace) -> int:
    async with MeshClient(args.endpoint) as mesh:
        await mesh.join_group(args.group, args.agent_id, args.tenant)
    emit(args, {"group": args.group, "agent_id": args.agent_id}, text=f"{args.agent_id} joined {args.group}")
    return 0


async def cmd_leave(args: argparse.Namespace) -> int:
    async with MeshClient(args.endpoint) as mesh:
        removed = await mesh.leave_group(args.group, args.agent_id, args.tenant)
    emit(args, {"removed": removed}, text=f"{args.agent_id} {'left' if removed else 'was not in'} {args.group}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """meshctl's argument parser, including plugged-in command modules."""
    parser = argparse.ArgumentParser(prog="meshctl", description="Inspect and drive a mabeam cluster.")
    parser.add_argument("--endpoint", default=os.environ.get("MABEAM_ENDPOINT", DEFAULT_ENDPOINT),
                        help=f"meshd gRPC HOST:PORT (default $MABEAM_ENDPOINT or {DEFAULT_ENDPOINT})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    security = parser.add_argument_group("security (default: $MABEAM_TOKEN, $MABEAM_TOKEN_FILE, $MABEAM_TLS_*)")
    security.add_argument("--token", help="bearer token (meshctl token issue)")
    security.add_argument("--token-file", help="file holding the bearer token")
    security.add_argument("--tls-ca", help="PEM CA of the servers' certificates (turns TLS on)")
    security.add_argument("--tls-cert", help="PEM client certificate (mTLS)")
    security.add_argument("--tls-key", help="PEM key of --tls-cert")
    security.add_argument("--tls-server-name", help="name to verify in the server certificate")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        return p

    add("ping", cmd_ping, "check the meshd answers and reaches etcd")
    add("members", cmd_members, "list live members")
    add("leader", cmd_leader, "show a role's leader (default: mesh)").add_argument("role", nargs="?", default="")
    p = add("names", cmd_names, "list registered names")
    p.add_argument("--tenant", default="")
    p.add_argument("--prefix", default="")
    p = add("lookup", cmd_lookup, "resolve a name")
    p.add_argument("name")
    p.add_argument("--tenant", default="")
    p = add("groups", cmd_groups, "list groups, or one group's members")
    p.add_argument("group", nargs="?", default="")
    p.add_argument("--tenant", default="")
    p = add("register", cmd_register, "register a name for an agent on this node")
    p.add_argument("name")
    p.add_argument("agent_id")
    p.add_argument("--tenant", default="")
    p.add_argument("--meta", action="append", default=[], help="KEY=VALUE (repeatable)")
    p = add("unregister", cmd_unregister, "remove a name this node owns")
    p.add_argument("name")
    p.add_argument("--tenant", default="")
    for name, func, text in (("join", cmd_join, "add an agent to a group"), ("leave", cmd_leave, "remove an agent")):
        p = add(name, func, text)
        p.add_argument("group")
        p.add_argument("agent_id")
        p.add_argument("--tenant", default="")
    for module_name in PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        module.add_commands(sub)
    # The global options work after the subcommand too (`meshctl members --json`); SUPPRESS keeps a value
    # given before the subcommand from being overwritten by the subparser's default.
    for command in sub.choices.values():
        option_strings = {opt for action in command._actions for opt in action.option_strings}
        if "--json" not in option_strings:
            command.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
        if "--endpoint" not in option_strings:
            command.add_argument("--endpoint", default=argparse.SUPPRESS, help="meshd gRPC HOST:PORT")
    return parser


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result


def _apply_security(args: argparse.Namespace) -> None:
    """The security flags, over the environment, become every client's default credentials."""
    given = {name: getattr(args, name, None) for name in SECURITY_FLAGS}
    if not any(given.values()):
        return
    env = ClientSecurity.from_env()
    token = given["token"] or (Path(given["token_file"]).read_text().strip() if given["token_file"] else env.token)
    set_default(ClientSecurity(token=token, tls_ca=given["tls_ca"] or env.tls_ca,
                               tls_cert=given["tls_cert"] or env.tls_cert, tls_key=given["tls_key"] or env.tls_key,
                               server_name=given["tls_server_name"] or env.server_name))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshctl`` console script."""
    args = build_parser().parse_args(argv)
    try:
        _apply_security(args)
    except (OSError, ValueError) as error:
        print(f"meshctl: {error}", file=sys.stderr)
        return 2
    try:
        result = args.func(args)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return int(result or 0)
    except MabeamError as error:
        print(f"meshctl: {error}", file=sys.stderr)
        for field, problem in error.field_violations.items():
            print(f"  {field}: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
