"""``meshctl run start|send|stream|cancel|approve|deny|get|list|verify``: durable runs from the command line.

The agentd address comes from ``--agentd`` (several, comma-separated: ``stream``
resumes on the next one if one goes away), else ``$MABEAM_AGENTD``, else
``127.0.0.1:7300``. Human output by default, ``--json`` for scripts (``stream``
prints one JSON event per line either way with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rich.table import Table

from mabeam_client.output import console, emit, to_dict
from mabeam_client.runs import RunClient

DEFAULT_AGENTD = "127.0.0.1:7300"


def _client(args: argparse.Namespace) -> RunClient:
    address = args.agentd or os.environ.get("MABEAM_AGENTD") or DEFAULT_AGENTD
    return RunClient([a.strip() for a in address.split(",") if a.strip()])


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"meshctl: {what} is not valid JSON: {error}") from None


def _summary(run: Any) -> str:
    executor = f"{run.executor.node_id} (token {run.executor.fencing_token}, {'live' if run.executor.live else 'gone'})" \
        if run.executor.node_id else "none"
    return (f"run {run.run_id} [{run.agent_type}] {run.status}: last seq {run.last_seq}, floor {run.retention_floor}, "
            f"frames {run.counters.frames} ({run.frames_pending} pending), executor {executor}")


async def cmd_start(args: argparse.Namespace) -> int:
    """Start a run (idempotent with --run-id)."""
    labels = dict(item.split("=", 1) for item in args.label)
    kwargs: dict[str, Any] = {"run_id": args.run_id, "tenant": args.tenant, "input_policy": args.policy,
                              "labels": labels}
    async with _client(args) as client:
        if args.input is not None:
            started = await client.start(args.agent_type, _json_arg(args.input, "input"), **kwargs)
        else:
            started = await client.start(args.agent_type, **kwargs)
    emit(args, {"created": started.created, "run": to_dict(started.run)},
         text=("started " if started.created else "already started: ") + _summary(started.run))
    return 0


async def cmd_send(args: argparse.Namespace) -> int:
    """Append a frame (idempotent by frame id)."""
    async with _client(args) as client:
        appended = await client.append(args.run_id, args.frame_id, args.type, _json_arg(args.payload, "payload"))
    emit(args, {"duplicate": appended.duplicate, "seq": appended.seq},
         text=f"frame {args.frame_id} {'was already accepted' if appended.duplicate else 'accepted'} (event {appended.seq})")
    return 0


async def cmd_stream(args: argparse.Namespace) -> int:
    """Print the run's events (following it until it ends unless --no-follow)."""
    async with _client(args) as client:
        async for event in client.stream(args.run_id, cursor=args.cursor, follow=not args.no_follow, raw=args.raw):
            if args.json:
                print(json.dumps(to_dict(event), sort_keys=True), flush=True)
            else:
                console.print(f"{event.seq:>6} {event.type:<24} {event.payload_json}", highlight=False, soft_wrap=True)
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    """Request cancellation."""
    async with _client(args) as client:
        result = await client.cancel(args.run_id, args.reason)
    emit(args, {"duplicate": result.duplicate, "seq": result.seq},
         text="cancellation was already requested" if result.duplicate else f"cancel requested (event {result.seq})")
    return 0


async def cmd_decide(args: argparse.Namespace) -> int:
    """Approve or deny a tool call that waits for a human."""
    async with _client(args) as client:
        decide = client.approve if args.run_command == "approve" else client.deny
        result = await decide(args.run_id, args.tool_call_id, args.note)
    verb = "approved" if args.run_command == "approve" else "denied"
    emit(args, {"duplicate": result.duplicate, "seq": result.seq},
         text=f"already {verb}" if result.duplicate else f"{verb} (event {result.seq})")
    return 0


async def cmd_get(args: argparse.Namespace) -> int:
    """Show a run's snapshot."""
    async with _client(args) as client:
        run = await client.get(args.run_id)
    emit(args, to_dict(run), text=_summary(run))
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    """List runs of a tenant."""
    async with _client(args) as client:
        runs, token = await client.list(args.tenant, args.agent_type, args.status, args.page_size, args.page_token)
    table = Table("RUN", "TYPE", "STATUS", "LAST SEQ", "FRAMES", "EXECUTOR", title="runs")
    for run in runs:
        table.add_row(run.run_id, run.agent_type, run.status, str(run.last_seq),
                      f"{run.counters.frames} ({run.frames_pending} pending)", run.executor.node_id)
    if token and not args.json:
        table.caption = f"more: --page-token {token}"
    emit(args, {"runs": [to_dict(r) for r in runs], "next_page_token": token}, table)
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    """Recompute the run's hash chain; exit 1 naming the first bad seq."""
    async with _client(args) as client:
        verdict = await client.verify(args.run_id)
    data = {"ok": verdict.ok, "checked": verdict.checked, "first_bad_seq": verdict.first_bad_seq,
            "problem": verdict.problem}
    text = (f"run {args.run_id}: hash chain verified ({verdict.checked} events)" if verdict.ok else
            f"run {args.run_id}: hash chain BROKEN at seq {verdict.first_bad_seq}: {verdict.problem}")
    emit(args, data, text=text)
    return 0 if verdict.ok else 1


def add_commands(subparsers: Any) -> None:
    """Add ``meshctl run ...`` to meshctl."""
    run = subparsers.add_parser("run", help="durable runs: start, send, stream, cancel, approve, deny, get, list, verify")
    sub = run.add_subparsers(dest="run_command", required=True)

    def add(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        parser.set_defaults(func=func)
        parser.add_argument("--agentd", default="",
                            help=f"agentd HOST:PORT[,HOST:PORT...] (default $MABEAM_AGENTD or {DEFAULT_AGENTD})")
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
        return parser

    p = add("start", cmd_start, "start a run of an agent type (idempotent by --run-id)")
    p.add_argument("agent_type")
    p.add_argument("input", nargs="?", default=None, help="the run's input (its first frame) as JSON")
    p.add_argument("--run-id", default="")
    p.add_argument("--tenant", default="")
    p.add_argument("--policy", default="", choices=["", "enqueue", "reject", "interrupt"],
                   help="input arriving while busy (default: the agent type's)")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    p = add("send", cmd_send, "append a frame to a run (idempotent by frame id)")
    p.add_argument("run_id")
    p.add_argument("frame_id")
    p.add_argument("type")
    p.add_argument("payload", nargs="?", default="null", help="JSON payload")
    p = add("stream", cmd_stream, "print a run's events, following it until it ends")
    p.add_argument("run_id")
    p.add_argument("--cursor", type=int, default=0, help="start after this seq")
    p.add_argument("--no-follow", action="store_true", help="stop when caught up")
    p.add_argument("--raw", action="store_true", help="events as stored (no upcasting)")
    p = add("cancel", cmd_cancel, "request a run's cancellation")
    p.add_argument("run_id")
    p.add_argument("--reason", default="")
    for verb in ("approve", "deny"):
        p = add(verb, cmd_decide, f"{verb} a tool call that waits for a human (see tool.approval_requested events)")
        p.add_argument("run_id")
        p.add_argument("tool_call_id")
        p.add_argument("--note", default="", help="why, for the log and the model")
    add("get", cmd_get, "show a run's snapshot").add_argument("run_id")
    p = add("list", cmd_list, "list runs, newest first")
    p.add_argument("--tenant", default="")
    p.add_argument("--agent-type", default="")
    p.add_argument("--status", default="")
    p.add_argument("--page-size", type=int, default=50)
    p.add_argument("--page-token", default="")
    add("verify", cmd_verify, "recompute a run's hash chain; names the first bad seq").add_argument("run_id")
