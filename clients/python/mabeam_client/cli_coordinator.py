"""``meshctl auction | bid | var | ledger | vote``: the coordinator from the command line.

meshctl wires these in with ``add_commands(subparsers)``. The coordinator
address comes from ``--coordinator HOST:PORT[,HOST:PORT...]`` (any node: a
standby redirects to the leader), else ``$MABEAM_COORDINATOR``, else
``127.0.0.1:7200``. Human tables by default, JSON with meshctl's ``--json``.
Configs and events are JSON; times in configs are absolute milliseconds, and
``--in SECONDS`` options fill deadlines relative to now. Exit codes: 0
success, 1 any service error (its code and message on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.table import Table

from mabeam_client.coordinator import CoordinatorClient
from mabeam_client.errors import MabeamError
from mabeam_client.output import console, emit, to_dict

DEFAULT_COORDINATOR = "127.0.0.1:7200"


def _endpoints(args: argparse.Namespace) -> list[str]:
    raw = getattr(args, "coordinator", None) or os.environ.get("MABEAM_COORDINATOR") or DEFAULT_COORDINATOR
    return [part.strip() for part in raw.split(",") if part.strip()]


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error.msg}") from None


def _run(args: argparse.Namespace, body: Callable[[CoordinatorClient], Awaitable[int]]) -> Awaitable[int]:
    async def main() -> int:
        async with CoordinatorClient(_endpoints(args)) as coord:
            try:
                return await body(coord)
            except MabeamError as error:
                print(f"error: {error}" + (f" ({error.reason})" if error.reason else ""), file=sys.stderr)
                return 1

    return main()


def _instance_table(instances: list[Any], title: str) -> Table:
    table = Table("id", "kind", "state", "events", "outcome", title=title)
    for i in instances:
        table.add_row(i.id, i.kind, i.state, str(i.event_count), _text(i.outcome)[:60])
    return table


def _text(value: Any) -> str:
    """A parsed JSON value back as compact JSON text (empty for none)."""
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- auction ------------------------------------------------------------------------


def cmd_auction(args: argparse.Namespace) -> Awaitable[int]:
    """``auction create|get|list|cancel|close|watch``."""

    async def body(coord: CoordinatorClient) -> int:
        if args.action == "create":
            config = dict(args.config or {})
            if args.closes_in is not None:
                # Which config field holds the closing time is the kind's to say (ListMechanisms).
                try:
                    described = await coord.mechanism(args.kind)
                except ValueError as error:
                    print(f"error: {error}", file=sys.stderr)
                    return 2
                if not described.closes_field:
                    print(f"error: a {args.kind} has no closing time to set; give its times in --config",
                          file=sys.stderr)
                    return 2
                now = _now_ms()
                config[described.closes_field] = now + int(args.closes_in * 1000)
                if described.opens_field:
                    config.setdefault(described.opens_field, now)
            instance = await coord.create_auction(args.kind, config, escrow=args.escrow, seller=args.seller or "",
                                                  instance_id=args.id)
            emit(args, to_dict(instance), text=f"created {instance.kind} auction {instance.id}")
        elif args.action == "get":
            instance = await coord.get(args.id, args.family)
            emit(args, to_dict(instance), _instance_table([instance], "instance"))
        elif args.action == "list":
            instances = await coord.list_instances(state=args.state or "")
            emit(args, [to_dict(i) for i in instances], _instance_table(instances, "instances"))
        elif args.action == "cancel":
            instance = await coord.cancel(args.id, args.reason or "")
            emit(args, to_dict(instance), text=f"cancelled {instance.id}")
        elif args.action == "close":
            instance = await coord.close_instance(args.id)
            emit(args, to_dict(instance), text=f"{instance.id}: {instance.state} {_text(instance.outcome)}")
        elif args.action == "watch":
            async for item in coord.watch(args.id):
                data = to_dict(item)
                if args.json:
                    print(json.dumps(data, sort_keys=True), flush=True)
                elif item.final_state:
                    console.print(f"[bold]{item.final_state}[/bold] {_text(item.outcome)}")
                else:
                    console.print(f"#{item.seq} @{item.now_ms} {_text(item.event)}")
        return 0

    return _run(args, body)


def cmd_mechanisms(args: argparse.Namespace) -> Awaitable[int]:
    """``mechanisms``: the kinds the coordinator runs, with their family and time fields."""

    async def body(coord: CoordinatorClient) -> int:
        kinds = await coord.list_mechanisms()
        table = Table("kind", "family", "deadline fields", "closes", "opens", "summary", title="mechanisms")
        for k in kinds:
            table.add_row(k.kind, k.family, ", ".join(k.deadline_fields), k.closes_field, k.opens_field, k.summary)
        emit(args, [to_dict(k) for k in kinds], table)
        return 0

    return _run(args, body)


def cmd_bid(args: argparse.Namespace) -> Awaitable[int]:
    """``bid ID --bidder B --amount N`` or ``bid ID --event JSON``."""

    async def body(coord: CoordinatorClient) -> int:
        event = args.event or {"type": "bid", "bidder": args.bidder, "amount": args.amount}
        if args.event is None and (args.bidder is None or args.amount is None):
            print("error: give --event JSON, or --bidder and --amount", file=sys.stderr)
            return 2
        ack = await coord.submit_bid(args.id, event, client_event_id=args.client_id)
        emit(args, to_dict(ack), text=f"accepted as #{ack.seq} ({ack.state})" + (" [duplicate]" if ack.duplicate
                                                                                    else ""))
        return 0

    return _run(args, body)


# -- vote -----------------------------------------------------------------------------


def cmd_vote(args: argparse.Namespace) -> Awaitable[int]:
    """``vote create|cast|get|close``."""

    async def body(coord: CoordinatorClient) -> int:
        if args.action == "create":
            config = args.config or {}
            instance = await coord.create_vote(config, bind_variable=args.bind or "", instance_id=args.id)
            emit(args, to_dict(instance), text=f"created vote {instance.id}")
        elif args.action == "cast":
            ack = await coord.cast_vote(args.id, {"type": "cast", "voter": args.voter, "choice": args.choice})
            emit(args, to_dict(ack), text=f"ballot #{ack.seq} ({ack.state})")
        elif args.action == "close":
            instance = await coord.close_instance(args.id)
            emit(args, to_dict(instance), text=f"{instance.id}: {_text(instance.outcome)}")
        else:
            instance = await coord.get(args.id, "vote")
            emit(args, to_dict(instance), _instance_table([instance], "vote"))
        return 0

    return _run(args, body)


# -- var ------------------------------------------------------------------------------


def _var_table(variables: list[Any], title: str) -> Table:
    table = Table("name", "version", "value", "set_by", title=title)
    for v in variables:
        table.add_row(v.name, str(v.version), _text(v.value)[:60], v.set_by)
    return table


def cmd_var(args: argparse.Namespace) -> Awaitable[int]:
    """``var create|get|set|list|history|watch``."""

    async def body(coord: CoordinatorClient) -> int:
        if args.action == "create":
            var = await coord.create_variable(args.name, args.schema or {}, args.value)
            emit(args, to_dict(var), text=f"{var.name} v{var.version} = {_text(var.value)}")
        elif args.action == "set":
            expected = args.expected if args.expected is not None else (await coord.get_variable(args.name)).version
            var = await coord.set_variable(args.name, args.value, expected)
            emit(args, to_dict(var), text=f"{var.name} v{var.version} = {_text(var.value)}")
        elif args.action == "get":
            var = await coord.get_variable(args.name)
            emit(args, to_dict(var), text=f"{var.name} v{var.version} = {_text(var.value)}")
        elif args.action == "list":
            variables = await coord.list_variables()
            emit(args, [to_dict(v) for v in variables], _var_table(variables, "variables"))
        elif args.action == "history":
            versions = await coord.variable_history(args.name)
            emit(args, [to_dict(v) for v in versions], _var_table(versions, f"history of {args.name}"))
        else:
            async for var in coord.watch_variable(args.name, from_version=args.from_version):
                if args.json:
                    print(json.dumps(to_dict(var), sort_keys=True), flush=True)
                else:
                    console.print(f"{var.name} v{var.version} = {_text(var.value)}")
        return 0

    return _run(args, body)


# -- ledger ---------------------------------------------------------------------------


def cmd_ledger(args: argparse.Namespace) -> Awaitable[int]:
    """``ledger deposit|transfer|balance|list``."""

    async def body(coord: CoordinatorClient) -> int:
        if args.action == "deposit":
            balance = await coord.deposit(args.agent, args.amount)
            emit(args, to_dict(balance), text=f"{balance.agent}: {balance.available} available, {balance.held} held")
        elif args.action == "transfer":
            result = await coord.transfer(args.agent, args.to, args.amount)
            emit(args, to_dict(result), text=f"{args.agent} → {args.to}: {args.amount}")
        elif args.action == "balance":
            balance = await coord.balance(args.agent)
            emit(args, to_dict(balance), text=f"{balance.agent}: {balance.available} available, {balance.held} held")
        else:
            balances = await coord.balances()
            table = Table("agent", "available", "held", title="balances")
            for b in balances:
                table.add_row(b.agent, str(b.available), str(b.held))
            emit(args, [to_dict(b) for b in balances], table)
        return 0

    return _run(args, body)


def add_commands(sub: Any) -> None:
    """Register auction, bid, var, ledger and vote under meshctl's subparsers."""

    def parser(name: str, func: Callable[[argparse.Namespace], Any], help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument("--coordinator", help=f"coordinator HOST:PORT[,...] (default $MABEAM_COORDINATOR or "
                                             f"{DEFAULT_COORDINATOR})")
        p.set_defaults(func=func)
        return p

    p = parser("auction", cmd_auction, "create, inspect, close, cancel and watch auctions")
    p.add_argument("action", choices=["create", "get", "list", "cancel", "close", "watch"])
    p.add_argument("id", nargs="?", default=None, help="instance id (get/cancel/close/watch; optional for create)")
    p.add_argument("--kind", default="sealed", help="sealed, english, dutch, multi_unit, combinatorial, or any "
                                                    "auction kind `meshctl mechanisms` lists")
    p.add_argument("--config", type=_json_arg, help="mechanism config JSON")
    p.add_argument("--closes-in", dest="closes_in", type=float,
                   help="close this many seconds from now (fills the kind's closes field, and its opens field "
                        "with now unless --config gives it)")
    p.add_argument("--escrow", action="store_true", help="hold bidders' funds in the ledger")
    p.add_argument("--seller", help="agent credited with the payment")
    p.add_argument("--family", default="auction", choices=["auction", "negotiation", "vote", "market"])
    p.add_argument("--state", choices=["open", "concluded", "cancelled"])
    p.add_argument("--reason")

    parser("mechanisms", cmd_mechanisms, "the mechanism kinds the coordinator runs (family, time fields)")

    p = parser("bid", cmd_bid, "submit a bid (durable before it is acknowledged)")
    p.add_argument("id")
    p.add_argument("--bidder")
    p.add_argument("--amount", type=int)
    p.add_argument("--event", type=_json_arg, help="the full event JSON instead of --bidder/--amount")
    p.add_argument("--client-id", dest="client_id", help="idempotency key (retry-safe)")

    p = parser("vote", cmd_vote, "create, cast, close and inspect votes")
    p.add_argument("action", choices=["create", "cast", "get", "close"])
    p.add_argument("id", nargs="?", default=None)
    p.add_argument("--config", type=_json_arg, help='e.g. {"rule":"majority","options":["x","y"],"voters":{"a":1}}')
    p.add_argument("--bind", help="variable the decision sets")
    p.add_argument("--voter")
    p.add_argument("--choice")

    p = parser("var", cmd_var, "typed, versioned variables")
    p.add_argument("action", choices=["create", "get", "set", "list", "history", "watch"])
    p.add_argument("name", nargs="?", default="")
    p.add_argument("value", nargs="?", type=_json_arg, default=None, help="JSON value (create/set)")
    p.add_argument("--schema", type=_json_arg, help="JSON schema (create)")
    p.add_argument("--expected", type=int, help="expected version for set (default: the current one)")
    p.add_argument("--from-version", dest="from_version", type=int, default=0)

    p = parser("ledger", cmd_ledger, "credit balances")
    p.add_argument("action", choices=["deposit", "transfer", "balance", "list"])
    p.add_argument("agent", nargs="?", default="")
    p.add_argument("amount", nargs="?", type=int, default=0)
    p.add_argument("--to", help="recipient of a transfer")
