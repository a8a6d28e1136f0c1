"""``meshctl pipeline validate|run FILE``: declarative pipelines from the command line.

``validate`` checks a file on this machine (no daemon needed): every problem
with its line, column and field, exit code 1 when there is any. ``run`` checks
it, bundles the sub-pipelines it references (relative paths only), starts a
durable run of agent type ``pipeline`` on agentd, and streams the run's events
until it ends; the exit code is 0 when the run completed, 1 otherwise. The run
survives the CLI: ``meshctl run stream RUN_ID`` picks it up again.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from pathlib import Path
from typing import Any

from mabeam.pipelines.spec import Pipeline, PipelineError, load_pipeline
from mabeam_client.output import console, emit
from mabeam_client.runs import RunClient

DEFAULT_AGENTD = "127.0.0.1:7300"
#: Event types shown while a pipeline streams (model tokens are shown as they arrive).
_SHOWN = ("pipeline.", "tool.", "model.receipt", "run.")


def bundle(path: Path) -> tuple[Pipeline, dict[str, str]]:
    """Check ``path`` and every sub-pipeline it names (recursively); the files by their relative names."""
    root = load_pipeline(path)
    base = path.parent
    files: dict[str, str] = {}
    pending = [root]
    while pending:
        pipeline = pending.pop()
        for step in pipeline.steps:
            for body in (step.body, step.fallback):
                if body is None or body.kind != "pipeline":
                    continue
                target = ((pipeline.base_dir or base) / str(body.fields["pipeline"])).resolve()
                try:
                    name = target.relative_to(base.resolve()).as_posix()
                except ValueError:
                    raise SystemExit(f"meshctl: sub-pipeline {body.fields['pipeline']!r} of {pipeline.source} is "
                                     f"outside {base}; keep a pipeline's files in its directory") from None
                if name not in files:
                    files[name] = target.read_text(encoding="utf-8")
                    pending.append(load_pipeline(target))
    return root, files


def _inputs(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"meshctl: --input {item!r} must look like NAME=JSON")
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            out[name] = text  # a bare word is a string: --input city=Oslo
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a pipeline file (and its sub-pipelines) without running it."""
    try:
        pipeline, files = bundle(Path(args.file))
    except PipelineError as error:
        if getattr(args, "json", False):
            emit(args, {"ok": False, "problems": [{"line": p.line, "column": p.column, "path": p.path,
                                                    "message": p.message} for p in error.problems]})
        else:
            console.print(str(error), highlight=False, soft_wrap=True)
        return 1
    emit(args, {"ok": True, "name": pipeline.name, "steps": [s.id for s in pipeline.steps],
                "sub_pipelines": sorted(files)},
         text=f"{args.file}: ok — pipeline {pipeline.name!r}, {len(pipeline.steps)} steps"
              + (f", sub-pipelines {', '.join(sorted(files))}" if files else ""))
    return 0


def _prepare(args: argparse.Namespace) -> tuple[Pipeline, dict[str, Any]] | None:
    path = Path(args.file)
    try:
        pipeline, files = bundle(path)
    except PipelineError as error:
        console.print(str(error), highlight=False, soft_wrap=True)
        return None
    return pipeline, {"pipeline": path.read_text(encoding="utf-8"), "source": path.name, "files": files,
                      "inputs": _inputs(args.input)}


async def cmd_run(args: argparse.Namespace) -> int:
    """Check, start as a durable run, and stream until it ends."""
    prepared = _prepare(args)  # small local files, read before any network I/O starts
    if prepared is None:
        return 1
    pipeline, payload = prepared
    address = args.agentd or os.environ.get("MABEAM_AGENTD") or DEFAULT_AGENTD
    run_id = args.run_id or f"pipeline-{pipeline.name}-{uuid.uuid4().hex[:8]}"
    async with RunClient([a.strip() for a in address.split(",") if a.strip()]) as client:
        started = await client.start("pipeline", payload, run_id=run_id, tenant=args.tenant)
        if not args.json:
            console.print(f"run {run_id} {'started' if started.created else 'already existed'}", highlight=False)
        status, output = "", None
        async for event in client.stream(run_id):
            if args.json:
                print(json.dumps({"seq": event.seq, "type": event.type, "payload": json.loads(event.payload_json)},
                                 sort_keys=True), flush=True)
            elif event.type == "model.delta":
                text = json.loads(event.payload_json).get("text", "")
                console.print(text, end="", highlight=False, soft_wrap=True)
            elif event.type.startswith(_SHOWN):
                console.print(f"\n{event.seq:>6} {event.type:<26} {event.payload_json[:300]}", highlight=False,
                              soft_wrap=True)
            if event.type in ("run.completed", "run.failed", "run.canceled"):
                status = event.type.split(".", 1)[1]
                output = json.loads(event.payload_json)
        if not args.json:
            console.print(f"\nrun {run_id} {status}: {json.dumps(output, ensure_ascii=False)[:2000]}", highlight=False,
                          soft_wrap=True)
    return 0 if status == "completed" else 1


def add_commands(subparsers: Any) -> None:
    """Register ``meshctl pipeline ...``."""
    pipeline = subparsers.add_parser("pipeline", help="declarative pipelines: validate a file, run it durably")
    sub = pipeline.add_subparsers(dest="pipeline_command", required=True)
    p = sub.add_parser("validate", help="check a pipeline file here (line-numbered problems; exit 1 if any)")
    p.set_defaults(func=cmd_validate)
    p.add_argument("file")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p = sub.add_parser("run", help="run a pipeline file as a durable run on agentd and stream it")
    p.set_defaults(func=cmd_run)
    p.add_argument("file")
    p.add_argument("--input", action="append", default=[], help="NAME=JSON (a bare word is a string; repeatable)")
    p.add_argument("--run-id", default="", help="idempotent: the same id again attaches to the same run")
    p.add_argument("--tenant", default="")
    p.add_argument("--agentd", default="",
                   help=f"agentd HOST:PORT[,HOST:PORT...] (default $MABEAM_AGENTD or {DEFAULT_AGENTD})")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON event per line")
