"""Fuzzed frames at every data-plane socket of a real meshd process: it refuses, counts, and keeps serving.

Two meshd (a two-node dev cluster on the test etcd). Raw pyzmq DEALERs send each of
node-1's sockets — the four channel ROUTERs (control, high, normal, bulk) and the
attach socket with its bulk lane — hypothesis-drawn multipart messages (see
fuzz_frames.py): valid batches of every envelope kind, the same broken in every
way the codec can be broken, random frames, chunked messages with a lying chunk,
more envelopes than a batch may carry, and frames above the socket's size limit.
Then meshd must still be running with nothing logged as a crash, answer Ping
and health SERVING, deliver a valid message on every channel (a chunked one on
bulk), answer a call through its gRPC face, carry calls on every channel between
an endpoint attached to node-2 and one attached to node-1 (through the fuzzed
channels; a chunked one too) and between two attached to node-1 (on the bulk
lane too), and ``mabeam_dataplane_rejected_frames_total`` on its ``/metrics``
must have grown for every socket. A second meshd with CURVE on:
an unknown key is denied and counted, a member's key gets its frames as far as
validation, and the channels serve afterwards.
Examples are derandomized (the same inputs every run) and few enough that the
file stays well within a minute on a busy machine.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import re
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import zmq
from fuzz_frames import cast_to, chunked_cast_to, every_kind, every_reason, multipart, system
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings

from mabeam.dataplane import envelope as wire
from mabeam.dataplane.attach import AttachedEndpoint
from mabeam.dev.testing import slow, wait_until
from mabeam.v1 import common_pb2, mesh_pb2, mesh_pb2_grpc
from mabeam.v1 import dataplane_pb2 as pb

NODE = "node-1"
EXAMPLES = 100
CHANNELS = ("control", "high", "normal", "bulk")
SOCKETS = (*CHANNELS, "attach", "attach_lane")
LANE_SUFFIX = b"~bulk"  # the attach protocol's bulk-lane routing-id suffix (mabeam.dataplane.attach)
_ids = itertools.count(1)


@dataclass
class Meshd:
    """The fuzzed meshd: its addresses, its log and the test's sockets to it."""

    grpc_address: str
    metrics_address: str
    attach_address: str
    data_addresses: dict[str, str]
    curve_public_key: str
    log_path: Path
    process: Any
    #: The other node's attach address (its endpoints reach node-1 through the fuzzed channels).
    peer_attach_address: str = ""
    peer: Any = None
    ctx: zmq.Context = field(default_factory=zmq.Context)
    channel: grpc.Channel | None = None

    @property
    def stub(self) -> mesh_pb2_grpc.MeshServiceStub:
        if self.channel is None:
            self.channel = grpc.insecure_channel(self.grpc_address)
        return mesh_pb2_grpc.MeshServiceStub(self.channel)

    def dealer(self, address: str, routing_id: bytes | None = None, curve: tuple[bytes, bytes] | None = None
               ) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 10_000)  # a send that cannot go fails the test instead of hanging it
        sock.setsockopt(zmq.RCVHWM, 0)  # every answer meshd sends is kept until the test reads it
        sock.setsockopt(zmq.ROUTING_ID, routing_id or b"fz" + os.urandom(6).hex().encode())
        if curve is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.curve_public_key.encode())
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[0])
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve[1])
        sock.connect(address)
        return sock

    def rejected(self) -> dict[tuple[str, str], float]:
        """``mabeam_dataplane_rejected_frames_total`` by (channel, reason), from meshd's /metrics."""
        text = urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=10).read().decode()
        found: dict[tuple[str, str], float] = {}
        for match in re.finditer(r'^mabeam_dataplane_rejected_frames_total\{channel="([^"]*)",reason="([^"]*)"\} (\S+)$',
                                 text, re.MULTILINE):
            found[(match[1], match[2])] = float(match[3])
        return found

    def rejected_on(self, socket: str) -> float:
        return sum(count for (where, _), count in self.rejected().items() if where == socket)

    def assert_serving(self) -> None:
        """Still running (its peer too), nothing logged as a crash, Ping and health answer."""
        for daemon in (self.process, self.peer):
            if daemon is None:
                continue
            log = daemon.log_path.read_text(errors="replace")
            assert daemon.alive, f"meshd of {daemon.node_id} exited:\n{log[-3000:]}"
            assert "Traceback" not in log, (f"meshd of {daemon.node_id} logged a crash:\n"
                                            f"{log[max(0, log.index('Traceback') - 500):][:4000]}")
        assert self.stub.Ping(mesh_pb2.PingRequest(), timeout=10).node.node_id == NODE
        health = health_pb2_grpc.HealthStub(self.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        self.ctx.destroy(linger=0)  # closes sockets a failed test left open (term would wait for them)


def _start(etcd: Any, run_dir: Path, config: str = "", nodes: int = 1) -> tuple[Any, Meshd]:
    from mabeam.dev.cluster import DevCluster

    extra: list[str] = []
    if config:
        (run_dir / "meshd.toml").write_text(config)
        extra = ["--config", str(run_dir / "meshd.toml")]
    cluster = DevCluster(nodes, etcd=etcd.endpoint, cluster=f"fd{uuid.uuid4().hex[:10]}", lease_ttl=2, run_dir=run_dir,
                         extra_args=extra).start()
    daemon = cluster.nodes[0].meshd
    assert daemon is not None
    with grpc.insecure_channel(daemon.endpoint) as channel:
        info = mesh_pb2_grpc.MeshServiceStub(channel).Ping(mesh_pb2.PingRequest(), timeout=10).node
    # Addresses as the ready line reported them (the channels bound port 0).
    meshd = Meshd(grpc_address=daemon.endpoint, metrics_address=daemon.metrics_address,
                  attach_address=str(daemon.info["attach"]), data_addresses=dict(daemon.info["data"]),
                  curve_public_key=info.curve_public_key, log_path=daemon.log_path, process=daemon)
    if nodes > 1:
        meshd.peer = cluster.nodes[1].meshd
        meshd.peer_attach_address = str(meshd.peer.info["attach"])
    return cluster, meshd


@pytest.fixture(scope="module")
def meshd(etcd_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Meshd]:
    cluster, found = _start(etcd_server, tmp_path_factory.mktemp("fuzz-dataplane"), nodes=2)
    try:
        yield found
    finally:
        found.close()
        cluster.close()


def _send(sock: zmq.Socket, messages: list[list[bytes]]) -> None:
    for frames in messages:
        sock.send_multipart(frames)


@functools.cache
def _drawn() -> list[list[list[bytes]]]:
    """The hypothesis-drawn messages, drawn once and sent to every socket (derandomized: the same each run).

    Drawing is most of the test's own CPU (~8 ms an example); nothing is checked per example (meshd is
    checked after the barrage), so there is nothing to shrink and one draw serves every socket.
    """
    drawn: list[list[list[bytes]]] = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages=multipart(NODE))
    def collect(messages: list[list[bytes]]) -> None:
        drawn.append(messages)

    collect()
    return drawn


def _fuzz(sock: zmq.Socket, examples: int = EXAMPLES, agent_id: str = "sink") -> None:
    """Every frame kind and every refusal reason (the deterministic floor), then the drawn messages."""
    _send(sock, every_kind(NODE, agent_id))
    _send(sock, every_reason(NODE))
    for messages in _drawn()[:examples]:
        _send(sock, messages)


def _answers(sock: zmq.Socket) -> list[pb.Envelope]:
    """What meshd sent back to an attach connection: each must be a valid batch."""
    envelopes: list[pb.Envelope] = []
    while sock.poll(0):
        batch, _ = wire.decode_frames(sock.recv_multipart())
        envelopes.extend(batch.envelopes)
    return envelopes


def _attach(sock: zmq.Socket, agent_id: str) -> list[pb.Envelope]:
    """Attach the raw connection as ``agent_id`` (so its messages reach routing, not only validation).

    Returns every envelope meshd sent the connection up to the answer: answered means meshd has taken
    everything this connection sent before (one connection's messages are handled in order).
    """
    request_id = next(_ids)
    sock.send_multipart(system(pb.SYSTEM_OP_ATTACH, request_id, agent_id, b"64"))
    seen: list[pb.Envelope] = []

    def answered() -> bool:
        if sock.poll(100):
            seen.extend(_answers(sock))
        return any(env.correlation_id == request_id and env.error_code == 0 for env in seen)

    wait_until(answered, 30, what=f"meshd answered the ATTACH of {agent_id}")
    return seen


class _Sentinel:
    """A subscribed endpoint only the test's last message goes to: when it arrives, meshd has taken every
    message the same connection sent before it (so no fuzz is still in flight when the next check runs)."""

    def __init__(self, meshd: Meshd, socket: str) -> None:
        self.agent_id = f"end-{socket}-{next(_ids)}"
        self.stream = meshd.stub.Subscribe(pb.SubscribeRequest(agent_id=self.agent_id), timeout=slow(120))
        assert next(self.stream).endpoint.agent_id == self.agent_id

    def cast(self, channel: str) -> list[bytes]:
        return cast_to(NODE, self.agent_id, wire.CHANNEL_BY_NAME[channel], b"end", next(_ids))

    def wait(self) -> None:
        try:
            assert next(self.stream).payload == b"end"
        finally:
            self.stream.cancel()


@pytest.mark.parametrize("socket", SOCKETS)
def test_fuzzed_frames_are_refused_and_counted(meshd: Meshd, socket: str) -> None:
    before = meshd.rejected_on(socket)
    sentinel = _Sentinel(meshd, socket)
    if socket in CHANNELS:
        sock = meshd.dealer(meshd.data_addresses[socket])
        _fuzz(sock)
        _send(sock, [sentinel.cast(socket)])
        sentinel.wait()
    else:
        # From an attached connection (its casts and calls are routed) and, on the lane, the same
        # endpoint's bulk-lane connection (its routing id is the main one + the lane suffix).
        agent_id = f"fuzzer-{socket}"
        routing_id = b"fz" + os.urandom(6).hex().encode()
        main = meshd.dealer(meshd.attach_address, routing_id)
        answers = _attach(main, agent_id)
        sock = main if socket == "attach" else meshd.dealer(meshd.attach_address + ".bulk", routing_id + LANE_SUFFIX)
        _fuzz(sock, agent_id=agent_id)
        # Attached again (the fuzz detaches it, and may attach it under other ids), the endpoint's last
        # message from the fuzzed connection reaches the sentinel.
        answers += _attach(main, agent_id)
        _send(sock, [sentinel.cast("normal")])
        sentinel.wait()
        answers += _answers(main)
        # Everything meshd answered is a valid batch (_answers decodes it) with a gRPC status code.
        assert all(0 <= env.error_code <= 16 for env in answers), [env.error_code for env in answers]
        if sock is not main:
            main.close()
    sock.close()
    assert meshd.rejected_on(socket) > before, meshd.rejected()
    # Each refusal under its own reason (every_reason sends one of each).
    reasons = {reason for (where, reason), count in meshd.rejected().items() if where == socket and count}
    expected = {"frame_count", "bad_header", "version", "unknown_op"}
    expected |= {"chunk_gap", "chunk_bad"} if socket in CHANNELS else {"bad_field"} if socket == "attach" else set()
    assert expected <= reasons, (socket, meshd.rejected())
    meshd.assert_serving()


def test_oversized_frames_drop_the_connection_not_the_daemon(meshd: Meshd) -> None:
    # Above MAXMSGSIZE libzmq closes the connection (chunk size + 1 MiB on the channels; the largest
    # message + 1 MiB on attach); meshd never sees the frame and goes on serving.
    for address, size in [*((meshd.data_addresses[ch], (2 << 20) + 1) for ch in CHANNELS),
                          (meshd.attach_address, (65 << 20) + 1), (meshd.attach_address + ".bulk", (65 << 20) + 1)]:
        sock = meshd.dealer(address)
        sock.send_multipart([b"\x08\x01", b"\x00" * size], copy=False)
        sock.close(linger=5000)
    meshd.assert_serving()


def test_meshd_serves_every_channel_and_attach_after_the_barrage(meshd: Meshd) -> None:
    # Runs after the fuzzing above (file order; each fuzz test waited until meshd had taken all its input).
    stub = meshd.stub
    sink = stub.Subscribe(pb.SubscribeRequest(agent_id="sink"), timeout=slow(60))
    try:
        assert next(sink).endpoint.agent_id == "sink"
        # A valid message on every channel, from a fresh connection, reaches the endpoint; a chunked one too.
        for channel in CHANNELS:
            sock = meshd.dealer(meshd.data_addresses[channel])
            payload = f"still serving {channel}".encode()
            _send(sock, [cast_to(NODE, "sink", wire.CHANNEL_BY_NAME[channel], payload, next(_ids))])
            got = next(sink)
            assert (got.payload, got.envelope.channel) == (payload, wire.CHANNEL_BY_NAME[channel])
            sock.close(linger=5000)
        big = os.urandom(3000)
        sock = meshd.dealer(meshd.data_addresses["bulk"])
        _send(sock, chunked_cast_to(NODE, "sink", big, 1024, next(_ids)))
        assert next(sink).payload == big
        sock.close(linger=5000)
        # A call through the gRPC face, answered by the subscribed endpoint.
        call = stub.Call.future(pb.CallRequest(to_agent=common_pb2.AgentRef(tenant="default", node_id=NODE, agent_id="sink"),
                                               payload=b"ping?", timeout_ms=20_000), timeout=30)
        request = next(sink)
        assert request.envelope.kind == wire.CALL and request.payload == b"ping?"
        stub.Send(pb.SendRequest(sender_agent_id="sink", to_agent=request.envelope.sender, payload=b"pong",
                                 reply_to_id=request.envelope.id), timeout=10)
        assert call.result().payload == b"pong"
    finally:
        sink.cancel()
    asyncio.run(_attached_calls(meshd.attach_address, meshd.peer_attach_address))
    meshd.assert_serving()


async def _attached_calls(address: str, peer_address: str) -> None:
    """Attached endpoints call an echo on node-1: from node-2 on every channel (across the fuzzed channels,
    a chunked payload on bulk), and from node-1 itself on the main connection and the bulk lane."""
    echo = await AttachedEndpoint.connect(address, "echo-after-fuzz")
    local = await AttachedEndpoint.connect(address, "caller-after-fuzz")
    remote = await AttachedEndpoint.connect(peer_address, "remote-after-fuzz")

    async def serve() -> None:
        async for message in echo:
            await echo.reply(message, bytes(message.payload))

    server = asyncio.create_task(serve())
    try:
        big = os.urandom((1 << 20) + 10)  # above the chunk size and the lane threshold
        for caller, payload, channel in [*((remote, ch.encode(), ch) for ch in CHANNELS), (remote, big, "normal"),
                                         (local, b"small", "high"), (local, b"bulk", "bulk"), (local, big, "normal")]:
            reply = await caller.call(echo.ref, payload, channel=channel, timeout=20)
            assert bytes(reply.payload) == payload, (caller.ref, channel)
        await remote.send(echo.ref, b"a cast from node-2", channel="normal")
        assert bytes((await local.call(echo.ref, b"after the cast", timeout=20)).payload) == b"after the cast"
    finally:
        server.cancel()
        for endpoint in (remote, local, echo):
            await endpoint.close()


def test_curve_meshd_denies_unknown_keys_and_refuses_fuzz_from_a_member_key(
        etcd_server: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    public, secret = (key.decode() for key in zmq.curve_keypair())
    # Z85 has no quote or backslash: TOML literal strings hold the keys as they are.
    config = (f"[dataplane]\ncurve = true\ncurve_public_key = '{public}'\ncurve_secret_key = '{secret}'\n"
              "curve_key_wait = 0\n")
    cluster, mesh = _start(etcd_server, tmp_path_factory.mktemp("fuzz-curve"), config)
    try:
        assert mesh.curve_public_key == public
        # An unknown key: the handshake is denied, nothing reaches meshd, the denial is counted per channel.
        rogues = [mesh.dealer(mesh.data_addresses[channel], curve=zmq.curve_keypair()) for channel in CHANNELS]
        for channel, rogue in zip(CHANNELS, rogues, strict=True):
            _send(rogue, [cast_to(NODE, "sink", wire.CHANNEL_BY_NAME[channel], b"intrusion", next(_ids))])
        wait_until(lambda: all(mesh.rejected().get((ch, "curve_denied"), 0) > 0 for ch in CHANNELS), 20,
                   what="denied handshakes counted on every channel")
        for rogue in rogues:
            rogue.close()
        # A member's key (here: the node's own, which it accepts as any member's): fuzzed frames get
        # through the handshake to validation, are refused and counted.
        member = (public.encode(), secret.encode())
        for channel in CHANNELS:
            sentinel = _Sentinel(mesh, channel)
            sock = mesh.dealer(mesh.data_addresses[channel], curve=member)
            _fuzz(sock, EXAMPLES // 4)
            _send(sock, [sentinel.cast(channel)])
            sentinel.wait()
            sock.close()
        assert all(any(where == ch and reason != "curve_denied" for where, reason in mesh.rejected())
                   for ch in CHANNELS), mesh.rejected()
        sink = mesh.stub.Subscribe(pb.SubscribeRequest(agent_id="sink"), timeout=slow(60))
        try:
            assert next(sink).endpoint.agent_id == "sink"
            for channel in CHANNELS:
                sock = mesh.dealer(mesh.data_addresses[channel], curve=member)
                _send(sock, [cast_to(NODE, "sink", wire.CHANNEL_BY_NAME[channel], channel.encode(), next(_ids))])
                got = next(sink)
                assert got.payload == channel.encode(), got  # the intrusion never arrived
                sock.close(linger=5000)
        finally:
            sink.cancel()
        mesh.assert_serving()
    finally:
        mesh.close()
        cluster.close()
