"""``meshctl agents | tree | spawn | agent-call | agent-stop``: an agentd from the command line.

meshctl wires these in with ``add_commands(subparsers)``. The agentd address comes
from ``--agentd``, else ``$MABEAM_AGENTD``, else ``127.0.0.1:7300``. Human tables by
default; ``--json`` (here or meshctl's global one) for scripts. (``call`` is the data
plane's command, which reaches agents by registered name through the mesh; this one
talks to one agentd directly.)
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from mabeam_client.agents import AgentClient
from mabeam_client.output import to_dict

DEFAULT_AGENTD = "127.0.0.1:7300"


def _address(args: argparse.Namespace) -> str:
    return args.agentd or os.environ.get("MABEAM_AGENTD") or DEFAULT_AGENTD


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "agents_json", False) or getattr(args, "json", False))


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


async def cmd_agents(args: argparse.Namespace) -> int:
    """List agents as a table (or JSON)."""
    async with AgentClient(_address(args)) as client:
        agents = await client.list(args.type)
    if _json(args):
        _print_json([to_dict(a) for a in agents])
        return 0
    table = Table("AGENT", "NAME", "TYPE", "STATUS", "WORKER", "RESTARTS", "MAILBOX", "HANDLED", "LAST ERROR")
    for a in sorted(agents, key=lambda a: (a.worker, a.agent_id)):
        table.add_row(a.agent_id, a.name, a.type, a.status, a.worker, str(a.restarts),
                      f"{a.mailbox_depth}/{a.mailbox_capacity}", str(a.handled), a.last_error[:60])
    Console().print(table)
    return 0


def _add_node(branch: Tree, node: Any) -> None:
    label = f"{node.agent_id} [{node.type}] {node.status}"
    if node.name:
        label += f" name={node.name}"
    if node.strategy:
        label += f" ({node.strategy})"
    if node.restarts:
        label += f" restarts={node.restarts}"
    child = branch.add(label)
    for sub in node.children:
        _add_node(child, sub)


async def cmd_tree(args: argparse.Namespace) -> int:
    """Print the supervision trees."""
    async with AgentClient(_address(args)) as client:
        roots = await client.tree(args.root)
    if _json(args):
        _print_json([to_dict(r) for r in roots])
        return 0
    top = Tree(f"agentd {_address(args)}")
    for root in roots:
        branch = top.add(f"worker {root.worker}") if root.worker else top
        _add_node(branch, root)
    Console().print(top)
    return 0


async def cmd_spawn(args: argparse.Namespace) -> int:
    """Spawn an agent."""
    async with AgentClient(_address(args)) as client:
        info = await client.spawn(args.type, json.loads(args.args), name=args.name, supervisor=args.supervisor,
                                  isolation=args.isolation, restart=args.restart,
                                  mailbox_capacity=args.mailbox_capacity)
    if _json(args):
        _print_json(to_dict(info))
    else:
        print(f"spawned {info.agent_id} ({info.type}) on worker {info.worker}")
    return 0


async def cmd_call(args: argparse.Namespace) -> int:
    """Call an agent with a JSON message and print the reply."""
    async with AgentClient(_address(args)) as client:
        reply = await client.call(args.agent, json.loads(args.message), timeout=args.timeout)
    _print_json(reply) if _json(args) else print(json.dumps(reply))
    return 0


async def cmd_stop(args: argparse.Namespace) -> int:
    """Stop an agent for good."""
    async with AgentClient(_address(args)) as client:
        await client.stop(args.agent)
    print(json.dumps({"stopped": args.agent}) if _json(args) else f"stopped {args.agent}")
    return 0


async def cmd_cast_group(args: argparse.Namespace) -> int:
    """Cast a JSON message to a process group (all members, or one in turn)."""
    async with AgentClient(_address(args)) as client:
        local = await client.cast_group(args.group, json.loads(args.message), mode=args.mode)
    print(json.dumps({"group": args.group, "local_deliveries": local}) if _json(args)
          else f"sent to group {args.group} ({local} local member(s))")
    return 0


def add_commands(subparsers: Any) -> None:
    """Add the agentd subcommands to meshctl."""
    def add(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text)
        parser.set_defaults(func=func)
        parser.add_argument("--agentd", default="", help=f"agentd HOST:PORT (default $MABEAM_AGENTD or {DEFAULT_AGENTD})")
        parser.add_argument("--json", dest="agents_json", action="store_true", help="machine-readable output")
        return parser

    p = add("agents", cmd_agents, "list the agents of an agentd")
    p.add_argument("--type", default="", help="only agents of this type")
    add("tree", cmd_tree, "show the supervision trees").add_argument("root", nargs="?", default="")
    p = add("spawn", cmd_spawn, "start an agent of a registered type")
    p.add_argument("type")
    p.add_argument("args", nargs="?", default="{}", help="start arguments as a JSON object")
    p.add_argument("--name", default="")
    p.add_argument("--supervisor", default="")
    p.add_argument("--isolation", choices=["shared", "process"], default="shared")
    p.add_argument("--restart", choices=["temporary", "transient", "permanent"], default="temporary")
    p.add_argument("--mailbox-capacity", type=int, default=0,
                   help="messages the agent's mailbox holds (0: the default; at most the tenant's max_mailbox)")
    p = add("agent-call", cmd_call, "call an agent on an agentd with a JSON message")
    p.add_argument("agent", help="agent id or registered name")
    p.add_argument("message", help="JSON message")
    p.add_argument("--timeout", type=float, default=5.0)
    p = add("agent-cast-group", cmd_cast_group, "cast a JSON message to a process group of agents")
    p.add_argument("group")
    p.add_argument("message", help="JSON message")
    p.add_argument("--mode", choices=["all", "one"], default="all")
    p = add("agent-stop", cmd_stop, "stop an agent for good")
    p.add_argument("agent")
