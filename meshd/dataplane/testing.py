"""Helpers for tests and benches: linked data planes, a cuttable TCP proxy, a data-plane peer process.

(Condition waits are :mod:`mabeam.dev.testing`'s ``async_wait_until``, the one for every test.)

``python -m meshd.dataplane.testing NODE_ID [--role echo|sink|silent] [--curve]`` runs a
:class:`DataPlane` with a static in-memory registry as a plain process: it
prints one JSON line ``{"node_id", "addresses", "curve_public_key"}`` on stdout,
then reads JSON lines on stdin — ``{"peer_up": {...}}``, ``{"peer_down": id}``,
``{"name": n, "agent_id": a, "node_id": x}`` (a static registry entry),
``{"stats": true}`` (prints statistics) and ``{"exit": true}``.
Its endpoint ``svc`` (registered as name ``svc``) behaves per role:
``echo`` replies to calls with the payload and counts casts, ``sink`` counts,
``silent`` never replies, ``latency`` replies ``ok`` to calls and records each
cast's one-way latency from its envelope's ``sent_unix_ns`` (``{"report":
true}`` prints ``{"latencies_us", "cpu_s"}`` and starts a new sample). This is
what fault tests kill -9, and what benches run as the remote data plane.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.message import AgentRef, Message
from mabeam.v1 import dataplane_pb2 as pb
from meshd.dataplane.config import DataPlaneConfig
from meshd.dataplane.plane import DataPlane
from meshd.dataplane.registry import InMemoryRegistry


class RawFlooder:
    """A raw ZeroMQ client (no SDK) that attaches as ``tenant`` and casts batches of 256 100 B casts to ``to`` as
    fast as its connection takes them, in a thread, ignoring every throttle (a hostile client); ``thread.start()``
    then ``close()``."""

    def __init__(self, address: str, tenant: str, to: pb.AgentRef) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        attach = pb.Envelope(version=wire.VERSION, id=1, kind=wire.SYSTEM, channel=wire.CONTROL,
                             system_op=pb.SYSTEM_OP_ATTACH, tenant=tenant)
        attach.sender.agent_id = "raw-flood"
        prefix = wire.batch_prefix("")
        self.sock.send_multipart([wire.encode_batch(prefix, [attach.SerializeToString()]), b"16"])
        cast = pb.Envelope(version=wire.VERSION, kind=wire.CAST, channel=wire.NORMAL, tenant=tenant)
        cast.to_agent.CopyFrom(to)
        envs = []
        for i in range(256):
            cast.id = 100 + i
            envs.append(cast.SerializeToString())
        self.frames = wire.batch_frames(prefix, envs, [b"x" * 100] * 256, True)
        self.stop = threading.Event()
        self.batches = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sock.send_multipart(self.frames, zmq.NOBLOCK)
                self.batches += 1
            except zmq.Again:
                self.stop.wait(0.0005)  # its pipe to meshd is full: meshd reads it at its own pace
            with contextlib.suppress(zmq.Again):
                while True:  # throttles and notices: read, ignored
                    self.sock.recv(zmq.NOBLOCK)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.sock.close(0)
        self.ctx.term()


def link(*planes: DataPlane) -> None:
    """Make every plane a peer of every other (what the membership watch does in meshd)."""
    for a in planes:
        for b in planes:
            if a is not b:
                a.peer_up(b.node_id, b.addresses, b.curve_public_key)


async def started_planes(count: int, registry: InMemoryRegistry | None = None,
                         config: DataPlaneConfig | None = None, prefix: str = "n") -> list[DataPlane]:
    """Start ``count`` linked planes sharing one registry."""
    registry = registry if registry is not None else InMemoryRegistry()
    planes = [DataPlane(f"{prefix}{i}", config or DataPlaneConfig(), registry) for i in range(count)]
    for plane in planes:
        await plane.start()
    link(*planes)
    return planes


class TcpProxy:
    """A loopback TCP forwarder whose connections a test can cut (``drop``) to simulate a dropped link."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.address = ""
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        """Listen on an ephemeral loopback port; returns ``tcp://127.0.0.1:PORT``."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        return self.address

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        pipes = [asyncio.create_task(self._pipe(reader, up_writer)), asyncio.create_task(self._pipe(up_reader, writer))]
        self._tasks.update(pipes)
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for task in pipes:
            task.cancel()
        for w in (writer, up_writer):
            w.close()
            self._writers.discard(w)
        self._tasks.difference_update(pipes)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    def drop(self) -> int:
        """Abort every open connection (data in flight is lost); returns how many were cut."""
        writers = list(self._writers)
        for w in writers:
            w.transport.abort()
        self._writers.clear()
        return len(writers)

    async def close(self) -> None:
        """Stop listening and cut everything."""
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class PeerProcess:
    """A data-plane peer in its own OS process (see the module docstring for the protocol)."""

    def __init__(self, node_id: str, role: str = "echo", curve: bool = False, extra: list[str] | None = None) -> None:
        args = [sys.executable, "-m", "meshd.dataplane.testing", node_id, "--role", role]
        if curve:
            args.append("--curve")
        self.node_id = node_id
        self.proc = subprocess.Popen([*args, *(extra or [])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer process {node_id} failed to start")
        info = json.loads(line)
        self.addresses: dict[str, str] = info["addresses"]
        self.curve_public_key: str | None = info["curve_public_key"]

    def command(self, **message: Any) -> None:
        """Send one JSON command line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def stats(self) -> dict[str, Any]:
        """Ask for and read the peer's statistics (blocking; call from a thread in async code)."""
        return self.ask(stats=True)

    def ask(self, **message: Any) -> dict[str, Any]:
        """Send a command that answers with one JSON line (``stats``, ``report``) and read the answer."""
        self.command(**message)
        assert self.proc.stdout is not None
        return dict(json.loads(self.proc.stdout.readline()))

    def kill(self) -> None:
        """kill -9."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        """Ask it to exit, then make sure it is gone."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.command(exit=True)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


async def _serve(node_id: str, role: str, curve: bool, config_json: str) -> None:
    registry = InMemoryRegistry()
    config = DataPlaneConfig(curve=curve, **json.loads(config_json))
    plane = DataPlane(node_id, config, registry)
    await plane.start()
    counters = {"casts": 0, "calls": 0, "bytes": 0}
    latencies: list[float] = []

    def handle(message: Message) -> None:
        counters["bytes"] += len(message.payload)
        if message.is_call:
            counters["calls"] += 1
            if role == "echo":
                endpoint.reply(message, message.payload)
            elif role == "latency":
                endpoint.reply(message, b"ok")
        else:
            counters["casts"] += 1
            if role == "latency":
                latencies.append((time.time_ns() - message.envelope.sent_unix_ns) / 1000)

    endpoint = plane.open_endpoint("svc", handler=handle)
    registry.set_name("default", "svc", endpoint.ref)
    print(json.dumps({"node_id": node_id, "addresses": plane.addresses,
                      "curve_public_key": plane.curve_public_key}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if "peer_up" in command:
                up = command["peer_up"]
                plane.peer_up(up["node_id"], up["addresses"], up.get("curve_public_key"))
            elif "peer_down" in command:
                plane.peer_down(command["peer_down"])
            elif "name" in command:
                registry.set_name("default", command["name"],
                                  AgentRef("default", command["node_id"], command["agent_id"]))
            elif "stats" in command:
                print(json.dumps({**plane.statistics(), **counters}), flush=True)
            elif "report" in command:
                print(json.dumps({"latencies_us": latencies, "cpu_s": time.process_time()}), flush=True)
                latencies.clear()
            elif "exit" in command:
                break
    finally:
        await plane.stop()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the peer process."""
    parser = argparse.ArgumentParser(prog="python -m meshd.dataplane.testing")
    parser.add_argument("node_id")
    parser.add_argument("--role", choices=["echo", "sink", "silent", "latency"], default="echo")
    parser.add_argument("--curve", action="store_true")
    parser.add_argument("--config", default="{}", help="DataPlaneConfig fields as JSON")
    args = parser.parse_args(argv)
    runner: Callable[[], Awaitable[None]] = lambda: _serve(args.node_id, args.role, args.curve, args.config)  # noqa: E731
    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:
        asyncio.run(runner())


if __name__ == "__main__":
    main()
