"""Head-of-line blocking: urgent latency under 64 MiB bulk, priority channels vs one shared channel.

``python -m bench hol [--quick] [--json]``. Two data-plane processes: this one
sends, a child (``python -m bench.hol child MODE``) receives. Urgent traffic:
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
import json
import subprocess
import sys
import time
from typing import Any

from bench.common import percentile


async def warm_up(plane: Any, target: Any) -> None:
    """First call, retried: the child may process its peer_up after our call arrives (its reply is then lost)."""
    from meshd.dataplane import DeadlineExceeded

    for _ in range(20):
        try:
            await plane.call(None, target, b"warm-up", timeout=0.5)
            return
        except DeadlineExceeded:
            continue
    raise RuntimeError("the child never answered")

BULK_SIZE = 64 << 20
URGENT_SIZE = 256


async def _child(mode: str) -> None:
    from meshd.dataplane import DataPlane, DataPlaneConfig, Message

    plane = DataPlane("hol-rx", DataPlaneConfig(single_channel=mode == "single"))
    await plane.start()
    latencies: list[float] = []

    def handle(message: Message) -> None:
        if message.is_call:
            endpoint.reply(message, b"ok")
        else:
            latencies.append((time.time_ns() - message.envelope.sent_unix_ns) / 1000)

    endpoint = plane.open_endpoint("rx", handler=handle)
    print(json.dumps({"addresses": plane.addresses}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if "peer_up" in command:
            plane.peer_up("hol-tx", command["peer_up"])
        elif "report" in command:
            print(json.dumps({"latencies_us": latencies, "cpu_s": time.process_time()}), flush=True)
            latencies = []
        elif "exit" in command:
            break
    await plane.stop()


class _Child:
    def __init__(self, mode: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.hol", "child", mode], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.addresses = json.loads(self._read())["addresses"]

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


async def _urgent(plane: Any, target: Any, seconds: float) -> int:
    payload = b"u" * URGENT_SIZE
    sent = 0
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        plane.send_nowait(None, target, payload, channel="high")
        sent += 1
        next_at += 0.001
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return sent


async def _bulk(plane: Any, target: Any, pace_bytes_per_s: float | None, done: list[int]) -> None:
    payload = b"B" * BULK_SIZE
    while True:
        started = time.monotonic()
        await plane.call(None, target, payload, channel="bulk", timeout=120)
        done[0] += BULK_SIZE
        if pace_bytes_per_s:
            await asyncio.sleep(max(0.0, BULK_SIZE / pace_bytes_per_s - (time.monotonic() - started)))


async def _regime(plane: Any, target: Any, child: _Child, seconds: float, bulk_senders: int,
                  pace: float | None) -> dict[str, Any]:
    done = [0]
    cpu_before = time.process_time()
    child_before = child.report()["cpu_s"]  # also resets the child's latencies
    async with asyncio.TaskGroup() as tg:
        bulk = [tg.create_task(_bulk(plane, target, pace, done)) for _ in range(bulk_senders)]
        started = time.monotonic()
        await _urgent(plane, target, seconds)
        elapsed = time.monotonic() - started
        for task in bulk:
            task.cancel()
    # Barrier: everything sent so far on high (FIFO per channel) has arrived once this call returns.
    await plane.call(None, target, b"barrier", channel="high", timeout=120)
    report = child.report()
    lat = report["latencies_us"]
    return {"p50_us": round(percentile(lat, 50), 1), "p99_us": round(percentile(lat, 99), 1), "count": len(lat),
            "bulk_mb_per_s": round(done[0] / elapsed / 1e6, 1),
            "cpu_sender_s": round(time.process_time() - cpu_before, 2),
            "cpu_receiver_s": round(report["cpu_s"] - child_before, 2), "seconds": round(elapsed, 2)}


async def _mode(mode: str, seconds: float) -> dict[str, Any]:
    from meshd.dataplane import AgentRef, DataPlane, DataPlaneConfig

    child = _Child(mode)
    plane = DataPlane("hol-tx", DataPlaneConfig(single_channel=mode == "single"))
    await plane.start()
    try:
        plane.peer_up("hol-rx", child.addresses)
        child.send(peer_up=plane.addresses)
        target = AgentRef("default", "hol-rx", "rx")
        await warm_up(plane, target)
        idle = await _regime(plane, target, child, seconds, 0, None)
        bulk = await _regime(plane, target, child, seconds, 2, None)
        pace = bulk["bulk_mb_per_s"] * 1e6 / 10
        paced = await _regime(plane, target, child, seconds, 1, pace)
    finally:
        await plane.stop()
        child.close()
    return {"idle": idle, "bulk": bulk, "paced": paced}


def _run_async(quick: bool) -> dict[str, Any]:
    seconds = 4.0 if quick else 15.0
    result: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for mode in ("multi", "single"):
        try:
            import uvloop

            regimes = uvloop.run(_mode(mode, seconds))
        except ImportError:
            regimes = asyncio.run(_mode(mode, seconds))
        details[mode] = regimes
        result[f"{mode}.idle_p50_us"] = regimes["idle"]["p50_us"]
        result[f"{mode}.idle_p99_us"] = regimes["idle"]["p99_us"]
        result[f"{mode}.bulk_p50_us"] = regimes["bulk"]["p50_us"]
        result[f"{mode}.bulk_p99_us"] = regimes["bulk"]["p99_us"]
        result[f"{mode}.paced_p50_us"] = regimes["paced"]["p50_us"]
        result[f"{mode}.paced_p99_us"] = regimes["paced"]["p99_us"]
        result[f"{mode}.bulk_mb_per_s"] = regimes["bulk"]["bulk_mb_per_s"]
    result["ratio_multi_p50"] = round(result["multi.bulk_p50_us"] / result["multi.idle_p50_us"], 2)
    result["ratio_multi_paced_p99"] = round(result["multi.paced_p99_us"] / result["multi.idle_p99_us"], 2)
    result["hol_factor_p99"] = round(result["single.bulk_p99_us"] / result["multi.bulk_p99_us"], 2)
    result["details"] = details
    return result


def run(quick: bool) -> dict[str, Any]:
    """Urgent p50/p99 idle, under continuous bulk and under paced bulk, multi vs single channel."""
    return _run_async(quick)


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        try:
            import uvloop

            uvloop.run(_child(sys.argv[2]))
        except ImportError:
            asyncio.run(_child(sys.argv[2]))
