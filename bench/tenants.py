"""Tenants: does a noisy neighbour hurt, and what do mTLS and CURVE cost? ``python -m bench tenants [--quick]``.

Two dev clusters of two nodes in the same run: a **secure** one (``DevCluster(secure=True)``: bearer tokens
and mTLS on gRPC, CURVE on the data plane) and a **plain** one (loopback, no security), the baseline of the
overhead ratios.

- ``victim_call_p50_us_*`` / ``victim_call_p99_us_*``: tenant ``victim`` calls, one at a time, 100 B through
  both meshd of the secure cluster: a caller attached to node-1 (this process) to an echo endpoint attached to
  node-2 (a child). ``quiet``: nothing else runs. ``noisy``: meanwhile tenant ``noisy`` floods 100 B casts at
  full speed from a child attached to node-1 to a sink attached to node-2 (another child), with a rate quota
  (``max_messages_per_second`` = :data:`NOISY_RATE`, set by the admin through ``SetTenantQuota``; meshd
  refuses the rest and throttles it: the SDK then paces its sends to the quota). ``noisy_raw``: the same
  flood from a raw ZeroMQ client that ignores the throttle (meshd mutes it: its input is dropped unread).
  ``noisy_unlimited``: the SDK flood without a quota (what the quota prevents).
  ``ratio_noisy_neighbour`` = p99 noisy / p99 quiet (target <= 2); ``ratio_noisy_neighbour_raw`` the same
  for the raw flood. ``flood_cpu_*``: the flooding process's CPU (share of one core) during the phase;
  ``meshd1_cpu_*``: the flooded meshd's.
- ``tls_overhead_call_p50``: p50 of a unary gRPC call (``MeshService.Ping``) over mTLS with a bearer token,
  divided by the same call on the plain cluster.
- ``curve_overhead_100b``: p50 of a 100 B data-plane call node-1 -> node-2 with CURVE, divided by the same on
  the plain cluster.

Everything runs on one host: the flood, the four meshd and the measuring process share its cores, so the
noisy ratio measures CPU contention as much as isolation (on the 2-core dev machine, under other load).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.common import percentile

PAYLOAD = b"x" * 100
#: The noisy tenant's message rate quota on each meshd (per node, per second).
NOISY_RATE = 2000


# ---------------------------------------------------------------- children (python -m bench.tenants ROLE ...)


async def _echo(address: str, tenant: str, agent_id: str) -> None:
    """Attached to a meshd as ``tenant``: answers calls with their payload, drops casts."""
    from mabeam.dataplane.attach import AttachedEndpoint

    endpoint = await AttachedEndpoint.connect(address, agent_id, tenant, max_pending=1 << 16)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        message = await endpoint.receive()
        if message.is_call:
            endpoint.reply_nowait(message, bytes(message.payload))


async def _flood(address: str, tenant: str, node: str, agent_id: str, per_second: str = "0") -> None:
    """Attached as ``tenant``: casts 100 B to ``agent_id`` on ``node`` as fast as it can (or about ``per_second``
    a second: at 16,000/s the victim's calls stayed at ~2 ms on the dev machine; at full speed they timed out
    until meshd's attach step was budgeted in envelopes, docs/security.md "Noisy neighbours")."""
    from mabeam.dataplane.attach import AttachedEndpoint
    from mabeam.dataplane.message import AgentRef

    endpoint = await AttachedEndpoint.connect(address, f"flood-{os.getpid()}", tenant, max_pending=1 << 16)
    target = AgentRef(tenant, node, agent_id)

    async def drain() -> None:  # refusals come back as error messages: keep the queue empty
        while True:
            await endpoint.receive()

    drainer = asyncio.create_task(drain())
    print(json.dumps({"ready": True}), flush=True)
    sent = 0
    while True:
        await endpoint.send(target, PAYLOAD)  # paced by the SDK once meshd throttles the tenant
        sent += 1
        if sent % 256 == 0:
            await asyncio.sleep(256 / float(per_second) if float(per_second) else 0)  # let the drainer run
    drainer.cancel()  # pragma: no cover - the parent kills this process


def _raw_flood(address: str, tenant: str, node: str, agent_id: str) -> None:
    """A raw ZeroMQ client (no SDK) attached as ``tenant``: batches of 256 casts of 100 B to ``agent_id`` on
    ``node`` as fast as its connection takes them, ignoring every throttle (what a hostile client does)."""
    import zmq

    from mabeam.dataplane import envelope as wire
    from mabeam.v1 import dataplane_pb2 as pb

    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(address)
    prefix = wire.batch_prefix("")
    attach = pb.Envelope(version=wire.VERSION, id=1, kind=wire.SYSTEM, channel=wire.CONTROL,
                         system_op=pb.SYSTEM_OP_ATTACH, tenant=tenant)
    attach.sender.agent_id = f"raw-{os.getpid()}"
    sock.send_multipart([wire.encode_batch(prefix, [attach.SerializeToString()]), b"16"])
    sock.recv_multipart()  # attached
    cast = pb.Envelope(version=wire.VERSION, kind=wire.CAST, channel=wire.NORMAL, tenant=tenant)
    cast.to_agent.tenant, cast.to_agent.node_id, cast.to_agent.agent_id = tenant, node, agent_id
    envs = []
    for i in range(256):
        cast.id = 100 + i
        envs.append(cast.SerializeToString())
    frames = wire.batch_frames(prefix, envs, [PAYLOAD] * 256, True)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        sock.send_multipart(frames)  # blocks while its pipe to meshd is full
        while sock.poll(0):  # throttles, mute notices: read and ignored
            sock.recv_multipart()


class _Child:
    """``python -m bench.tenants ROLE ARGS``: started, waited for (its ready line), killed."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.tenants", *args], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench child {args} exited before it was ready")

    def cpu(self) -> float:
        """CPU seconds (user + system) this child used so far."""
        return _cpu_seconds(self.proc.pid)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc; 0 when unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# ---------------------------------------------------------------- measurements


async def _calls(address: str, tenant: str, target_node: str, echo_id: str, seconds: float,
                 errors: list[str] | None = None) -> list[float]:
    """Round trips (µs) of sequential 100 B calls for ``seconds`` (after a warm-up until the first answers).

    With ``errors``, a failed call is recorded there (its time counts as a round trip: the caller waited).
    """
    from mabeam.dataplane.attach import AttachedEndpoint
    from mabeam.dataplane.message import AgentRef
    from mabeam.dev.testing import ConditionTimeout, async_wait_until

    endpoint = await AttachedEndpoint.connect(address, f"caller-{uuid.uuid4().hex[:6]}", tenant)
    target = AgentRef(tenant, target_node, echo_id)
    try:
        async def answered() -> bool:
            await endpoint.call(target, b"warm-up", timeout=0.5)
            return True

        try:
            await async_wait_until(answered, 15, interval=0.05, what="the echo answers through both meshd")
        except ConditionTimeout:
            if errors is None:
                raise
            errors.append("no answer within 15 s")
        warm_until = time.monotonic() + 1.0  # a second of calls first (bounded: a flooded path may time out)
        while time.monotonic() < warm_until:
            try:
                await endpoint.call(target, PAYLOAD, timeout=1.0)
            except Exception:
                if errors is None:
                    raise
        times: list[float] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter_ns()
            try:
                await endpoint.call(target, PAYLOAD, timeout=2.0)
            except Exception as error:
                if errors is None:
                    raise
                errors.append(type(error).__name__)
            times.append((time.perf_counter_ns() - started) / 1000)
        return times
    finally:
        await endpoint.close()


async def _pings(endpoint: str, security: Any, count: int) -> list[float]:
    """Round trips (µs) of ``count`` sequential MeshService.Ping calls."""
    from mabeam_client.mesh import MeshClient

    async with MeshClient(endpoint, security=security) as mesh:
        for _ in range(100):
            await mesh.ping()
        times = []
        for _ in range(count):
            started = time.perf_counter_ns()
            await mesh.ping()
            times.append((time.perf_counter_ns() - started) / 1000)
    return times


async def _set_rate(endpoint: str, security: Any, tenant: str, rate: int) -> None:
    from mabeam.v1 import mesh_pb2
    from mabeam_client.mesh import MeshClient

    async with MeshClient(endpoint, security=security) as mesh:
        await mesh.set_tenant_quota(mesh_pb2.TenantQuota(tenant=tenant, max_messages_per_second=rate))


async def _wait_quota(endpoint: str, security: Any, tenant: str, rate: int) -> None:
    from mabeam.dev.testing import async_wait_until
    from mabeam_client.mesh import MeshClient

    async with MeshClient(endpoint, security=security) as mesh:
        async def applied() -> bool:
            return (await mesh.tenant_usage(tenant)).quota.max_messages_per_second == rate

        await async_wait_until(applied, 20, interval=0.05, what=f"{endpoint} follows {tenant}'s quota")


async def _noisy_phase(cluster: Any, seconds: float, errors: list[str], cpu: dict[str, float],
                       raw: bool = False) -> list[float]:
    """The victim's calls while tenant ``noisy`` floods node-1 -> node-2 (through the SDK, or ``raw``).

    ``cpu`` gets the flooder's and meshd-1's CPU (share of one core) over the phase.
    """
    one, two = cluster.nodes
    sink = _Child("echo", two.attach_address, "noisy", "sink")
    flood = _Child("rawflood" if raw else "flood", one.attach_address, "noisy", two.node_id, "sink")
    started, flood_cpu, meshd_cpu = time.monotonic(), flood.cpu(), _cpu_seconds(one.proc.pid)
    try:
        return await _calls(one.attach_address, "victim", two.node_id, "echo", seconds, errors)
    finally:
        elapsed = time.monotonic() - started
        cpu["flood"] = (flood.cpu() - flood_cpu) / elapsed
        cpu["meshd1"] = (_cpu_seconds(one.proc.pid) - meshd_cpu) / elapsed
        flood.close()
        sink.close()


async def _measure(quick: bool) -> dict[str, Any]:
    from mabeam.dev.cluster import DevCluster

    seconds = 6.0 if quick else 20.0
    pings = 500 if quick else 2000
    result: dict[str, Any] = {}
    tag = uuid.uuid4().hex[:6]
    plain = DevCluster(2, lease_ttl=2, cluster=f"bt{tag}p")
    secure = DevCluster(2, lease_ttl=2, cluster=f"bt{tag}s", secure=True)
    echoes: list[_Child] = []
    try:
        await asyncio.gather(asyncio.to_thread(plain.start), asyncio.to_thread(secure.start))
        assert secure.security is not None
        admin = secure.security.client()
        for tenant in ("victim", "noisy"):  # tenants exist once they have a quota (unlimited here)
            await _set_rate(secure.nodes[0].endpoint, admin, tenant, 0)
        for cluster in (plain, secure):
            echoes.append(_Child("echo", cluster.nodes[1].attach_address, "victim" if cluster is secure else
                                 "default", "echo"))

        # mTLS + token against plaintext: the same unary call, alternated halves to share the machine's moods.
        tls, clear = [], []
        for _ in range(2):
            tls += await _pings(secure.nodes[0].endpoint, admin, pings // 2)
            clear += await _pings(plain.nodes[0].endpoint, None, pings // 2)
        result.update(grpc_ping_p50_us_tls=percentile(tls, 50), grpc_ping_p50_us_plain=percentile(clear, 50),
                      tls_overhead_call_p50=percentile(tls, 50) / percentile(clear, 50))

        # CURVE against plaintext: 100 B data-plane calls node-1 -> node-2.
        curve = await _calls(secure.nodes[0].attach_address, "victim", secure.nodes[1].node_id, "echo", seconds / 2)
        raw = await _calls(plain.nodes[0].attach_address, "default", plain.nodes[1].node_id, "echo", seconds / 2)
        result.update(dp_call_p50_us_curve=percentile(curve, 50), dp_call_p50_us_plain=percentile(raw, 50),
                      curve_overhead_100b=percentile(curve, 50) / percentile(raw, 50))

        # The noisy neighbour, on the secure cluster.
        quiet = await _calls(secure.nodes[0].attach_address, "victim", secure.nodes[1].node_id, "echo", seconds)
        noisy_errors: list[str] = []
        raw_errors: list[str] = []
        unlimited_errors: list[str] = []
        cpu_noisy: dict[str, float] = {}
        cpu_raw: dict[str, float] = {}
        cpu_unlimited: dict[str, float] = {}
        for rate in (NOISY_RATE, 0):  # with the quota, then without (last: it may upset the cluster)
            await _set_rate(secure.nodes[0].endpoint, admin, "noisy", rate)
            for node in secure.nodes:  # every meshd follows the quota through its watch
                await _wait_quota(node.endpoint, admin, "noisy", rate)
            if rate:
                noisy = await _noisy_phase(secure, seconds, noisy_errors, cpu_noisy)
                raw = await _noisy_phase(secure, seconds, raw_errors, cpu_raw, raw=True)
            else:
                unlimited = await _noisy_phase(secure, seconds, unlimited_errors, cpu_unlimited)
        result.update(
            victim_call_p50_us_noisy_raw=percentile(raw, 50), victim_call_p99_us_noisy_raw=percentile(raw, 99),
            victim_call_errors_noisy_raw=len(raw_errors), victim_calls_noisy_raw=len(raw),
            ratio_noisy_neighbour_raw=percentile(raw, 99) / percentile(quiet, 99),
            flood_cpu_noisy=cpu_noisy["flood"], flood_cpu_noisy_raw=cpu_raw["flood"],
            flood_cpu_noisy_unlimited=cpu_unlimited["flood"], meshd1_cpu_noisy=cpu_noisy["meshd1"],
            meshd1_cpu_noisy_raw=cpu_raw["meshd1"], meshd1_cpu_noisy_unlimited=cpu_unlimited["meshd1"])
        result.update(
            victim_calls_quiet=len(quiet), victim_calls_noisy=len(noisy),
            victim_call_p50_us_quiet=percentile(quiet, 50), victim_call_p99_us_quiet=percentile(quiet, 99),
            victim_call_p50_us_noisy=percentile(noisy, 50), victim_call_p99_us_noisy=percentile(noisy, 99),
            victim_call_p99_us_noisy_unlimited=percentile(unlimited, 99),
            victim_call_errors_noisy=len(noisy_errors), victim_call_errors_noisy_unlimited=len(unlimited_errors),
            victim_call_error_kinds_noisy_unlimited=sorted(set(unlimited_errors)),
            ratio_noisy_neighbour=percentile(noisy, 99) / percentile(quiet, 99),
            ratio_noisy_neighbour_unlimited=percentile(unlimited, 99) / percentile(quiet, 99),
            noisy_rate_quota=NOISY_RATE, load_average_1m=os.getloadavg()[0])
        return result
    finally:
        for child in echoes:
            child.close()
        await asyncio.gather(asyncio.to_thread(secure.close), asyncio.to_thread(plain.close))


def run(quick: bool) -> dict[str, Any]:
    """Measure (see the module docstring)."""
    return asyncio.run(_measure(quick))


def _child_main(argv: list[str]) -> None:
    role, *args = argv
    if role == "rawflood":
        with contextlib.suppress(KeyboardInterrupt):
            _raw_flood(*args)
        return
    coro = {"echo": _echo, "flood": _flood}[role](*args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
