"""Head-of-line blocking: urgent latency under 64 MiB bulk, priority channels vs one shared channel.

``python -m bench hol [--quick] [--json]``.

**Headline keys (``multi.*``, ``single.*``, ratios): two real meshd processes.** A
``DevCluster(2)`` (embedded etcd, meshd node-1 and node-2, membership through
etcd); the sender is a process attached to node-1 (``AttachedEndpoint`` over
ipc, this process), the receiver a child attached to node-2 (``python -m
bench.hol rx ADDRESS``). Every message goes sender → ipc → meshd-1 → TCP
channel → meshd-2 → ipc → receiver. The single-channel mode runs meshd with
``[dataplane] single_channel = true`` (a TOML file passed with ``--config``),
fresh processes per mode. CPU seconds of all four processes per regime
(``details.<mode>.<regime>.cpu_s``, from /proc) show when the tail is CPU-bound.

**``plane.*`` keys: the data plane alone.** Two data-plane processes:
``python -m meshd.inplane plane-hol MODE`` sends, its child (``python -m
meshd.dataplane.testing``, role latency) receives (bench/ never imports meshd). Urgent traffic:
256-byte casts on ``high`` at ~1,000/s; the child measures each one's one-way
latency from the envelope's ``sent_unix_ns`` (both processes read the same
host clock). Bulk: 64 MiB messages on ``bulk`` sent as calls (the reply bounds
the data in flight) by two concurrent senders ("continuous", full speed), or by
one sender paced to a tenth of the continuous bandwidth measured just before
("paced"). Each regime runs for a fixed time in the multi-channel mode (the
design) and in the documented single-channel mode (``single_channel=True``:
every message on one socket, as one TCP connection would carry it), each mode
in fresh processes. CPU seconds of both processes per regime are reported to
show when the tail is CPU-bound rather than connection-bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import inplane, percentile

BULK_SIZE = 64 << 20
URGENT_SIZE = 256
# Built once, before any regime: building 64 MiB inside a bulk task stalled the sender's loop (and so the
# urgent stream) for tens of ms at the start of each regime.
@functools.cache
def bulk_payload() -> bytes:
    return b"B" * BULK_SIZE


class _Child:
    def __init__(self, args: list[str], prefix: list[str] | None = None) -> None:
        # ``prefix`` runs it elsewhere: on host B of the two-host mode (ip netns exec ... taskset -c 1).
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "bench.hol", *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.addresses = json.loads(self._read()).get("addresses")

    def _read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def report(self) -> dict[str, Any]:
        self.send(report=True)
        return dict(json.loads(self._read()))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(exit=True)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _plane_mode(mode: str, seconds: float) -> dict[str, Any]:
    """One mode of the ``plane.*`` figures, from ``python -m meshd.inplane plane-hol`` (its own processes)."""
    raw = inplane("plane-hol", mode, str(seconds), str(BULK_SIZE), str(URGENT_SIZE))
    regimes = {}
    for regime, figures in raw.items():
        lat = figures["latencies_us"]
        regimes[regime] = {"p50_us": round(percentile(lat, 50), 1), "p99_us": round(percentile(lat, 99), 1),
                           "count": len(lat), "bulk_mb_per_s": round(figures["bulk_bytes"] / figures["seconds"] / 1e6, 1),
                           "cpu_sender_s": round(figures["cpu_sender_s"], 2),
                           "cpu_receiver_s": round(figures["cpu_receiver_s"], 2), "seconds": round(figures["seconds"], 2)}
    return regimes


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _figures(prefix: str, measure: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Run ``measure(mode)`` for both modes; put the issue's keys under ``prefix``; returns the details."""
    details: dict[str, Any] = {}
    for mode in ("multi", "single"):
        regimes = measure(mode)
        details[mode] = regimes
        for regime in ("idle", "bulk", "paced"):
            result[f"{prefix}{mode}.{regime}_p50_us"] = regimes[regime]["p50_us"]
            result[f"{prefix}{mode}.{regime}_p99_us"] = regimes[regime]["p99_us"]
        result[f"{prefix}{mode}.bulk_mb_per_s"] = regimes["bulk"]["bulk_mb_per_s"]
    result[f"{prefix}ratio_multi_p50"] = round(result[f"{prefix}multi.bulk_p50_us"]
                                               / result[f"{prefix}multi.idle_p50_us"], 2)
    result[f"{prefix}ratio_multi_paced_p99"] = round(result[f"{prefix}multi.paced_p99_us"]
                                                     / result[f"{prefix}multi.idle_p99_us"], 2)
    result[f"{prefix}hol_factor_p99"] = round(result[f"{prefix}single.bulk_p99_us"]
                                              / result[f"{prefix}multi.bulk_p99_us"], 2)
    return details


def run(quick: bool, hosts: bool = False) -> dict[str, Any]:
    """Urgent p50/p99 idle, under continuous and paced bulk, multi vs single channel: through two meshd, then in-plane.

    With ``hosts``: through two meshd on two network-namespace hosts of one core each (bench/_twohost.py).
    """
    seconds = 3.0 if quick else 15.0
    result: dict[str, Any] = {}
    if hosts:
        return _run_two_hosts(seconds, result)
    mesh = _figures("", lambda mode: _run_loop(_mesh_mode(mode, seconds)), result)
    plane = _figures("plane.", lambda mode: _plane_mode(mode, seconds), result)
    result["details"] = {**mesh, "plane": plane}
    result["notes"] = ("headline: sender attached (ipc) to meshd node-1 -> TCP channels -> meshd node-2 -> ipc -> "
                       "receiver process, DevCluster(2); plane.*: two processes hosting DataPlane directly; "
                       "cpu_s per regime: sender, meshd-1, meshd-2, receiver (from /proc)")
    return result


def _run_two_hosts(seconds: float, result: dict[str, Any]) -> dict[str, Any]:
    from bench._twohost import TwoHosts

    with TwoHosts() as two:
        def measure(mode: str) -> dict[str, Any]:
            two.reconfigure(single_channel=mode == "single")
            return two.measure("bench.hol", mode, str(seconds))

        result["details"] = _figures("", measure, result)
    result["notes"] = ("two hosts: network namespaces on a bridge, one core each; host A (CPU 0): sender attached "
                       "(ipc) to meshd-1; host B (CPU 1): meshd-2 and the receiver; CURVE off as in the one-host "
                       "figures; cpu_s per regime: sender, meshd-1, meshd-2, receiver")
    return result


# ---------------------------------------------------------------- through two real meshd processes

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class MeshPair:
    """Two meshd (DevCluster), a receiver child attached to node-2; ``sender`` attached to node-1 here."""

    def __init__(self, single_channel: bool = False, receiver: str = "hol-rx") -> None:
        from mabeam.dev.cluster import DevCluster

        self.run_dir = Path(tempfile.mkdtemp(prefix="bench-mesh-"))
        config = self.run_dir / "meshd.toml"
        config.write_text(f"[dataplane]\nsingle_channel = {'true' if single_channel else 'false'}\n")
        self.cluster = DevCluster(2, lease_ttl=2, cluster=f"bench{os.getpid()}",
                                  run_dir=self.run_dir, extra_args=["--config", str(config)])
        self.receiver_id = receiver
        self.child: _Child | None = None
        self.sender: Any = None

    async def start(self) -> MeshPair:
        from mabeam.dataplane.attach import AttachedEndpoint
        from mabeam.dataplane.message import AgentRef

        await asyncio.to_thread(self.cluster.start)
        self.child = _Child(["rx", self.cluster.nodes[1].attach_address, self.receiver_id])
        self.sender = await AttachedEndpoint.connect(self.cluster.nodes[0].attach_address, "bench-tx",
                                                     max_pending=1 << 20)
        self.target = AgentRef("default", "node-2", self.receiver_id)
        await self._warm_up()
        return self

    async def _warm_up(self) -> None:
        """Calls until one succeeds: node-1 learns node-2's data addresses from the etcd membership watch."""
        from mabeam.dev.testing import async_wait_until

        async def answered() -> bool:
            await self.sender.call(self.target, b"warm-up", timeout=0.5)
            return True

        await async_wait_until(answered, 20, interval=0.05, what="node-2's receiver answers through both meshd")

    @property
    def pids(self) -> dict[str, int | str]:
        """The four processes of the measured path."""
        assert self.child is not None and self.cluster.nodes[0].proc and self.cluster.nodes[1].proc
        return {"sender": "self", "meshd1": self.cluster.nodes[0].proc.pid, "meshd2": self.cluster.nodes[1].proc.pid,
                "receiver": self.child.proc.pid}

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the four processes."""
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    async def close(self) -> None:
        try:
            if self.sender is not None:
                await self.sender.close()
        finally:
            if self.child is not None:
                self.child.close()
            await asyncio.to_thread(self.cluster.close)
            import shutil

            shutil.rmtree(self.run_dir, ignore_errors=True)


class HostsPair(MeshPair):
    """The same pair on the two hosts of ``bench/_twohost.py``: the meshd run already (on hosts A and B);
    this process (inside host A, on CPU 0) is the sender; the receiver child runs on host B (CPU 1)."""

    def __init__(self, receiver: str = "hol-rx") -> None:
        from bench._twohost import TwoHostEnv

        env = TwoHostEnv.current()
        if env is None:
            raise RuntimeError("HostsPair runs inside host A of `python -m bench NAME --hosts`")
        self.env = env
        self.receiver_id = receiver
        self.child = None
        self.sender = None

    async def start(self) -> MeshPair:
        from mabeam.dataplane.attach import AttachedEndpoint
        from mabeam.dataplane.message import AgentRef

        self.child = _Child(["rx", self.env.attach_b, self.receiver_id], prefix=self.env.b.prefix)
        self.sender = await AttachedEndpoint.connect(self.env.attach_a, "bench-tx", max_pending=1 << 20)
        self.target = AgentRef("default", self.env.node_b, self.receiver_id)
        await self._warm_up()
        return self

    @property
    def pids(self) -> dict[str, int | str]:
        """The four processes of the measured path."""
        assert self.child is not None
        return {"sender": "self", "meshd1": self.env.meshd_a, "meshd2": self.env.meshd_b,
                "receiver": self.child.proc.pid}

    async def close(self) -> None:
        try:
            if self.sender is not None:
                await self.sender.close()
        finally:
            if self.child is not None:
                self.child.close()


async def _rx(address: str, agent_id: str) -> None:
    """The receiver child: attached to a meshd; casts -> one-way latency, calls -> reply (echo up to 1 KiB)."""
    from mabeam.dataplane import stallprobe
    from mabeam.dataplane.attach import AttachedEndpoint

    probe = stallprobe.start_from_env("receiver")
    endpoint = await AttachedEndpoint.connect(address, agent_id, max_pending=1 << 20)
    state: dict[str, Any] = {"latencies": [], "casts": 0, "sent_ns": []}

    async def serve() -> None:
        latencies: list[float] = state["latencies"]
        while True:
            message = await endpoint.receive()
            if message.is_call:
                payload = message.payload
                await endpoint.reply(message, bytes(payload) if len(payload) <= 1024 else b"ok")
            else:
                now = time.time_ns()
                state["casts"] += 1
                if len(message.payload) == URGENT_SIZE:
                    latencies = state["latencies"]
                    latencies.append((now - message.envelope.sent_unix_ns) / 1000)
                    if probe is not None:  # to line the slow ones up with the stall records
                        state["sent_ns"].append(message.envelope.sent_unix_ns)

    server = asyncio.create_task(serve())
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if "report" in command:
            print(json.dumps({"latencies_us": state["latencies"], "casts": state["casts"],
                              "cpu_s": cpu_seconds()}), flush=True)
            if probe is not None:
                with (probe.path.parent / f"urgent-{os.getpid()}.jsonl").open("a") as out:
                    out.write(json.dumps({"sent_ns": state["sent_ns"], "latencies_us": state["latencies"]}) + "\n")
            state["latencies"] = []
            state["casts"] = 0
            state["sent_ns"] = []
        elif "exit" in command:
            break
    server.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server
    await endpoint.close()
    if probe is not None:
        probe.stop()


async def _mesh_urgent(pair: MeshPair, seconds: float) -> int:
    payload = b"u" * URGENT_SIZE
    sent = 0
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        await pair.sender.send(pair.target, payload, channel="high")
        sent += 1
        next_at += 0.001
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return sent


async def _mesh_bulk(pair: MeshPair, pace_bytes_per_s: float | None, done: list[int]) -> None:
    payload = bulk_payload()
    while True:
        started = time.monotonic()
        await pair.sender.call(pair.target, payload, channel="bulk", timeout=120)
        done[0] += BULK_SIZE
        if pace_bytes_per_s:
            await asyncio.sleep(max(0.0, BULK_SIZE / pace_bytes_per_s - (time.monotonic() - started)))


async def _mesh_regime(pair: MeshPair, seconds: float, bulk_senders: int, pace: float | None) -> dict[str, Any]:
    assert pair.child is not None
    done = [0]
    pair.child.report()  # resets the child's latencies
    cpu_before = pair.cpu()
    async with asyncio.TaskGroup() as tg:
        bulk = [tg.create_task(_mesh_bulk(pair, pace, done)) for _ in range(bulk_senders)]
        started = time.monotonic()
        sent = await _mesh_urgent(pair, seconds)
        elapsed = time.monotonic() - started
        cpu_after = pair.cpu()
        for task in bulk:
            task.cancel()
    # Barrier: everything sent so far on high (FIFO per channel) has arrived once this call returns.
    await pair.sender.call(pair.target, b"barrier", channel="high", timeout=120)
    report = pair.child.report()
    lat = report["latencies_us"]
    return {"p50_us": round(percentile(lat, 50), 1), "p99_us": round(percentile(lat, 99), 1), "count": len(lat),
            "sent": sent, "bulk_mb_per_s": round(done[0] / elapsed / 1e6, 1), "seconds": round(elapsed, 2),
            "cpu_s": {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_before}}


async def _mesh_mode(mode: str, seconds: float, two_hosts: bool = False) -> dict[str, Any]:
    from mabeam.dataplane import stallprobe

    probe = stallprobe.start_from_env("sender")
    pair = HostsPair() if two_hosts else MeshPair(single_channel=mode == "single")
    try:
        await pair.start()
        bulk_payload()
        idle = await _mesh_regime(pair, seconds, 0, None)
        bulk = await _mesh_regime(pair, seconds, 2, None)
        pace = bulk["bulk_mb_per_s"] * 1e6 / 10
        paced = await _mesh_regime(pair, seconds, 1, pace)
    finally:
        await pair.close()
        if probe is not None:
            probe.stop()
    return {"idle": idle, "bulk": bulk, "paced": paced}


if __name__ == "__main__":
    if sys.argv[1:2] == ["rx"]:
        _run_loop(_rx(sys.argv[2], sys.argv[3]))
    elif sys.argv[1:2] == ["hosts-inner"]:  # inside host A of the two-host mode (bench/_twohost.py)
        print(json.dumps(_run_loop(_mesh_mode(sys.argv[2], float(sys.argv[3]), two_hosts=True))), flush=True)
