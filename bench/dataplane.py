"""Data-plane throughput and call latency across two meshd, with raw pyzmq baselines in the same run.

``python -m bench dataplane [--quick] [--json]``.

**Headline keys (``mesh_*``): two real meshd processes** (``bench.hol.MeshPair``:
DevCluster(2), sender attached over ipc to node-1 in this process, receiver a
child attached to node-2). Throughput: one-way casts on ``normal`` through
sender → meshd-1 → TCP → meshd-2 → receiver, with a call barrier every
``window`` casts (its reply proves every earlier cast was delivered, FIFO per
channel, and bounds what is in flight so no queue overflows); the child counts
what it received. Call round trip: 64 B calls from the sender to the receiver,
which echoes.

**``plane_*`` keys: the data plane alone.** ``python -m meshd.inplane
plane-throughput`` hosts a sending DataPlane; its child (``python -m
meshd.dataplane.testing``, role echo) hosts the receiving one, with an
in-process handler endpoint ``svc`` (bench/ never imports meshd).
Throughput: N one-way casts on ``normal``, then one call on the same channel as
a FIFO barrier (its reply proves every earlier cast was delivered). Baselines:
sync pyzmq PUSH/PULL (one message per frame, blocking send/recv) and REQ/REP
between this process and a child. Each mode runs in its own processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import zmq

from bench.common import inplane, percentile

SIZES = {"100b": 100, "1kib": 1024, "64kib": 64 << 10, "1mib": 1 << 20}


def _counts(quick: bool) -> dict[str, int]:
    scale = 1 if quick else 3
    return {"100b": 200_000 * scale, "1kib": 100_000 * scale, "64kib": 8_000 * scale, "1mib": 600 * scale}


# ---------------------------------------------------------------- raw pyzmq baselines

#: Where this process's baseline children bind (and their peers connect): loopback on one host, the host's
#: address on host B of the two-host mode (``$MABEAM_BENCH_BIND``, set by :func:`_spawn`).
BIND_ENV = "MABEAM_BENCH_BIND"


def _bind_host() -> str:
    return os.environ.get(BIND_ENV, "127.0.0.1")


def _child(role: str, arg: str) -> None:
    if role == "aecho":
        _asyncio_echo(int(arg))
        return
    if role == "relay":
        _run_loop(_relay(arg))
        return
    count = int(arg)
    ctx = zmq.Context()
    if role == "pull":
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, 100_000)
    else:
        sock = ctx.socket(zmq.REP)
    port = sock.bind_to_random_port(f"tcp://{_bind_host()}")
    print(port, flush=True)
    if role == "pull":
        for _ in range(count):
            sock.recv(copy=False)
        print("done", flush=True)
    else:
        for _ in range(count):
            sock.send(sock.recv())
    sock.close(linger=0)
    ctx.term()


def _spawn(role: str, arg: int | str, far: bool = True) -> tuple[subprocess.Popen[str], str]:
    """A baseline child; returns it and the ``host:port`` it bound. ``far``: on the other host in the two-host
    mode (host B, CPU 1: as the receiver and meshd-2 are); otherwise beside this process."""
    from bench._twohost import TwoHostEnv

    two = TwoHostEnv.current()
    prefix, host = (two.b.prefix, two.b.address) if two is not None and far else ([], "127.0.0.1")
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "bench.dataplane", role, str(arg)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, BIND_ENV: host})
    assert proc.stdout is not None
    return proc, f"{host}:{int(proc.stdout.readline())}"


def raw_push_pull(size: int, count: int) -> float:
    """Messages/s of plain pyzmq PUSH→PULL between two processes."""
    proc, address = _spawn("pull", count)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.connect(f"tcp://{address}")
    payload = b"x" * size
    started = time.perf_counter()
    for _ in range(count):
        sock.send(payload, copy=size <= 65536)
    assert proc.stdout is not None
    proc.stdout.readline()
    elapsed = time.perf_counter() - started
    proc.wait(timeout=30)
    sock.close(linger=0)
    ctx.term()
    return count / elapsed


def _ping(kind: int, address: str, count: int) -> list[float]:
    """Round-trip times (µs) of ``count`` blocking 64 B send/recv pairs on a ``kind`` socket to ``address``."""
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(kind)
    sock.connect(f"tcp://{address}")
    times = []
    for _ in range(count):
        started = time.perf_counter_ns()
        sock.send(b"x" * 64)
        sock.recv()
        times.append((time.perf_counter_ns() - started) / 1000)
    sock.close(linger=0)
    ctx.term()
    return times


def raw_req_rep(count: int) -> list[float]:
    """Round-trip times (µs) of plain pyzmq REQ/REP, 64 B."""
    proc, address = _spawn("rep", count)
    times = _ping(zmq.REQ, address, count)
    proc.wait(timeout=30)
    return times


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _asyncio_echo(count: int) -> None:
    """Child of the asyncio floor: a sync ROUTER whose FD wakes a uvloop reader that echoes with NOBLOCK."""

    async def serve() -> None:
        ctx = zmq.Context(io_threads=1)
        sock = ctx.socket(zmq.ROUTER)
        print(sock.bind_to_random_port(f"tcp://{_bind_host()}"), flush=True)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        seen = [0]

        def on_readable() -> None:
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                sock.send_multipart(sock.recv_multipart(zmq.NOBLOCK), zmq.NOBLOCK)
                seen[0] += 1
                if seen[0] >= count and not done.done():
                    done.set_result(None)

        loop.add_reader(sock.getsockopt(zmq.FD), on_readable)
        on_readable()
        await done
        loop.remove_reader(sock.getsockopt(zmq.FD))
        sock.close(linger=100)
        ctx.term()

    _run_loop(serve())


def asyncio_floor(count: int) -> list[float]:
    """Round trips (µs) of the smallest asyncio request/reply two processes can do with pyzmq here.

    Sync DEALER/ROUTER sockets woken through the event loop's ``add_reader`` on their FD, 64 B,
    no envelope, no routing: the floor under any asyncio data plane's call on this machine, to
    compare with the sync REQ/REP baseline (which blocks in libzmq and never touches a loop).
    """
    proc, address = _spawn("aecho", count)

    async def ping() -> list[float]:
        ctx = zmq.Context(io_threads=1)
        sock = ctx.socket(zmq.DEALER)
        sock.connect(f"tcp://{address}")
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[bytes]] = []

        def on_readable() -> None:
            while waiting and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                waiting.pop().set_result(sock.recv(zmq.NOBLOCK))

        loop.add_reader(sock.getsockopt(zmq.FD), on_readable)
        times = []
        for _ in range(count):
            started = time.perf_counter_ns()
            future = loop.create_future()
            waiting.append(future)
            sock.send(b"x" * 64, zmq.NOBLOCK)
            on_readable()
            await future
            times.append((time.perf_counter_ns() - started) / 1000)
        loop.remove_reader(sock.getsockopt(zmq.FD))
        sock.close(linger=0)
        ctx.term()
        return times

    times: list[float] = _run_loop(ping())
    proc.wait(timeout=30)
    return times


async def _relay(next_address: str) -> None:
    """Child of the relay floor: ROUTER in, DEALER on to ``next_address``, replies back to the last requester."""
    ctx = zmq.Context(io_threads=1)
    front = ctx.socket(zmq.ROUTER)
    back = ctx.socket(zmq.DEALER)
    back.connect(f"tcp://{next_address}")
    print(front.bind_to_random_port(f"tcp://{_bind_host()}"), flush=True)
    loop = asyncio.get_running_loop()
    requester = [b""]

    def pump() -> None:
        # Both directions every time: a send on one socket may consume the other's FD edge.
        while True:
            moved = False
            while front.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                requester[0], message = front.recv_multipart(zmq.NOBLOCK)
                back.send(message, zmq.NOBLOCK)
                moved = True
            while back.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                front.send_multipart([requester[0], back.recv(zmq.NOBLOCK)], zmq.NOBLOCK)
                moved = True
            if not moved:
                return

    loop.add_reader(front.getsockopt(zmq.FD), pump)
    loop.add_reader(back.getsockopt(zmq.FD), pump)
    pump()
    await loop.create_future()  # until the parent terminates us


def relay_floor(count: int) -> list[float]:
    """Round trips (µs) through the same four processes and hops as a call through two meshd, in bare pyzmq.

    This process → relay → relay → echo and back, each relay a uvloop process reading both sockets from
    their FD callbacks (as meshd does), 64 B, no envelope, no routing: the floor under any design that
    puts two daemons between two processes on this machine (bench "ratio_call_p50_vs_relay_floor").
    """
    # Placed as the call through two meshd is: the echo and the second relay where the receiver and
    # meshd-2 are, the first relay beside this process (meshd-1 and the sender), in the two-host mode.
    echo, address = _spawn("aecho", count)
    relays = []
    for far in (True, False):
        relay, address = _spawn("relay", address, far=far)
        relays.append(relay)
    try:
        times = _ping(zmq.DEALER, address, count)
        echo.wait(timeout=30)
    finally:
        for relay in relays:
            relay.terminate()
            relay.wait(timeout=10)
    return times


# ---------------------------------------------------------------- through two real meshd processes

async def _meshd(quick: bool, two_hosts: bool = False) -> dict[str, Any]:
    from bench.hol import HostsPair, MeshPair

    pair = HostsPair(receiver="bench-rx") if two_hosts else MeshPair(receiver="bench-rx")
    out: dict[str, Any] = {}
    try:
        await pair.start()
        assert pair.child is not None
        sender, target = pair.sender, pair.target
        for key, count in _counts(quick).items():
            size = SIZES[key]
            payload = b"x" * size
            # Credit window: a barrier call every ``window`` casts, and at most two windows in flight (the
            # next window is sent while the previous barrier travels), so the pipe stays full and no queue
            # on the path (65,536 envelopes per peer and channel, and per attached endpoint) overflows.
            window = max(4, min(8192, (16 << 20) // size))
            pair.child.report()
            cpu_before = pair.cpu()
            started = time.perf_counter()
            barrier: asyncio.Future[Any] | None = None
            for i in range(count):
                await sender.send(target, payload)
                if i % window == window - 1:
                    if barrier is not None:
                        await barrier
                    barrier = asyncio.ensure_future(sender.call(target, b"barrier", timeout=120))
            if barrier is not None:
                await barrier
            await sender.call(target, b"barrier", timeout=120)
            elapsed = time.perf_counter() - started
            cpu_after = pair.cpu()
            received = pair.child.report()["casts"]
            out[f"mesh_{key}_msgs_per_s"] = round(received / elapsed)
            out[f"mesh_{key}_mb_per_s"] = round(received * size / elapsed / 1e6, 1)
            out[f"mesh_{key}_lost"] = count - received
            out[f"mesh_{key}_cpu_s"] = {n: round(cpu_after[n] - cpu_before[n], 2) for n in cpu_before}
        rtts = []
        cpu_before = pair.cpu()
        for _ in range(2000 if quick else 10000):
            started_ns = time.perf_counter_ns()
            await sender.call(target, b"x" * 64, timeout=10)
            rtts.append((time.perf_counter_ns() - started_ns) / 1000)
        cpu_after = pair.cpu()
        out["mesh_call_p50_us"] = round(percentile(rtts, 50), 1)
        out["mesh_call_p99_us"] = round(percentile(rtts, 99), 1)
        out["mesh_call_cpu_us_per_call"] = {n: round((cpu_after[n] - cpu_before[n]) / len(rtts) * 1e6, 1)
                                            for n in cpu_before}
    finally:
        await pair.close()
    return out


# ---------------------------------------------------------------- the data plane alone (two processes)

def _plane(quick: bool) -> dict[str, Any]:
    """The ``plane_*`` figures, measured by ``python -m meshd.inplane plane-throughput`` in its own process."""
    counts = _counts(quick)
    raw = inplane("plane-throughput", json.dumps({"sizes": {k: SIZES[k] for k in counts}, "counts": counts,
                                                    "calls": 2000 if quick else 10000}))
    out: dict[str, Any] = {}
    for key, count in counts.items():
        elapsed = raw["seconds"][key]
        out[f"plane_{key}_msgs_per_s"] = round(count / elapsed)
        out[f"plane_{key}_mb_per_s"] = round(count * SIZES[key] / elapsed / 1e6, 1)
    out["plane_call_p50_us"] = round(percentile(raw["call_rtts_us"], 50), 1)
    out["plane_call_p99_us"] = round(percentile(raw["call_rtts_us"], 99), 1)
    return out


def run(quick: bool, hosts: bool = False) -> dict[str, Any]:
    """Throughput per size and call latency through two meshd, then in-plane, then raw pyzmq; ratios.

    With ``hosts``: through two meshd on two network-namespace hosts of one core each, every baseline placed
    and pinned the same way (bench/_twohost.py); the in-plane figures are not part of that mode.
    """
    if hosts:
        from bench._twohost import TwoHosts

        with TwoHosts() as two:
            result = two.measure("bench.dataplane", "quick" if quick else "full")
        result["notes"] = ("two hosts: network namespaces on a bridge, one core each; host A (CPU 0): sender "
                           "attached (ipc) to meshd-1, PUSH/REQ/ping ends, the first relay; host B (CPU 1): "
                           "meshd-2, the receiver, PULL/REP/echo ends, the second relay; CURVE off as in the "
                           "one-host figures; no plane_* figures in this mode")
        return result
    result = _measure(quick, two_hosts=False)
    result.update(_plane(quick))
    for key in _counts(quick):
        result[f"plane_ratio_{key}"] = round(result[f"plane_{key}_msgs_per_s"] / result[f"raw_{key}_msgs_per_s"], 3)
    result["plane_ratio_call_p50"] = round(result["plane_call_p50_us"] / result["raw_reqrep_p50_us"], 2)
    result["plane_ratio_call_p50_vs_floor"] = round(result["plane_call_p50_us"] / result["floor_asyncio_p50_us"], 2)
    result["notes"] = ("mesh_*: sender attached (ipc) to meshd node-1 -> TCP -> meshd node-2 -> ipc -> receiver "
                       "process (DevCluster(2)), casts on normal with a call barrier every window; "
                       "plane_*: DataPlane (uvloop) -> child DataPlane handler endpoint; "
                       "raw: sync pyzmq, one frame per message")
    return result


def _measure(quick: bool, two_hosts: bool) -> dict[str, Any]:
    """The mesh figures and every raw baseline, with their ratios (in host A, in the two-host mode)."""
    result: dict[str, Any] = dict(_run_loop(_meshd(quick, two_hosts)))
    for key, count in _counts(quick).items():
        rate = raw_push_pull(SIZES[key], count)
        result[f"raw_{key}_msgs_per_s"] = round(rate)
        result[f"ratio_{key}"] = round(result[f"mesh_{key}_msgs_per_s"] / rate, 3)
    rtts = raw_req_rep(2000 if quick else 10000)
    result["raw_reqrep_p50_us"] = round(percentile(rtts, 50), 1)
    result["raw_reqrep_p99_us"] = round(percentile(rtts, 99), 1)
    result["ratio_call_p50"] = round(result["mesh_call_p50_us"] / result["raw_reqrep_p50_us"], 2)
    floor = asyncio_floor(2000 if quick else 10000)
    result["floor_asyncio_p50_us"] = round(percentile(floor, 50), 1)
    result["floor_asyncio_p99_us"] = round(percentile(floor, 99), 1)
    result["ratio_floor_p50"] = round(result["floor_asyncio_p50_us"] / result["raw_reqrep_p50_us"], 2)
    result["ratio_call_p50_vs_floor"] = round(result["mesh_call_p50_us"] / result["floor_asyncio_p50_us"], 2)
    relay = relay_floor(2000 if quick else 10000)
    result["floor_relay_p50_us"] = round(percentile(relay, 50), 1)
    result["floor_relay_p99_us"] = round(percentile(relay, 99), 1)
    result["ratio_relay_floor_p50"] = round(result["floor_relay_p50_us"] / result["raw_reqrep_p50_us"], 2)
    result["ratio_call_p50_vs_relay_floor"] = round(result["mesh_call_p50_us"] / result["floor_relay_p50_us"], 2)
    return result


if __name__ == "__main__":
    if sys.argv[1] == "hosts-inner":  # inside host A of the two-host mode (bench/_twohost.py)
        print(json.dumps(_measure(sys.argv[2] == "quick", two_hosts=True)), flush=True)
    else:
        _child(sys.argv[1], sys.argv[2])
    json.dumps({})
