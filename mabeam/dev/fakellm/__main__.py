"""``python -m mabeam.dev.fakellm [--host H] [--port 0] [--script FILE] [--api-key K]``.

Binds first (port 0 picks a free one), then prints ``fake-llm ready http://HOST:PORT``
with the bound port, and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import sys
from collections.abc import Sequence

import uvicorn
import uvloop

from mabeam.dev.fakellm.app import DroppedConnection, FakeLLM
from mabeam.dev.fakellm.script import Script


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The server's flags (``mabeam fake-llm`` reuses them)."""
    parser = parser or argparse.ArgumentParser(prog="python -m mabeam.dev.fakellm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--script", default=None, help="JSON script file (rules, per-model faults)")
    parser.add_argument("--api-key", default="", help="require this key (Authorization: Bearer or x-api-key)")
    return parser


class _QuietDrops(logging.Filter):
    """Drops the traceback uvicorn logs for a connection cut on purpose (fault ``drop_after``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DroppedConnection))


def serve(args: argparse.Namespace) -> int:
    """Bind, print the ready line, serve until a signal."""
    script = Script()
    if args.script:
        try:
            with open(args.script, encoding="utf-8") as handle:
                script = Script.from_dict(json.load(handle))
        except (OSError, ValueError) as error:
            print(f"fake-llm: cannot load script {args.script}: {error}", file=sys.stderr)
            return 2
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    port = sock.getsockname()[1]
    app = FakeLLM(script, api_key=args.api_key).app
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1,
                            lifespan="off")
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())

    async def main() -> None:
        async def announce() -> None:
            while not server.started:
                if server.should_exit:
                    return
                await asyncio.sleep(0.01)
            print(f"fake-llm ready http://{args.host}:{port}", flush=True)

        async with asyncio.TaskGroup() as group:
            group.create_task(announce())
            await server.serve(sockets=[sock])

    uvloop.run(main())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
