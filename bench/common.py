"""Shared helpers for benchmarks: metadata, percentiles, result files."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[rank])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "commit": commit}


def write_result(name: str, result: dict[str, Any], quick: bool) -> Path:
    """Write a benchmark's result with metadata; returns the timestamped file's path."""
    now = dt.datetime.now(dt.UTC)
    doc = {"benchmark": name, "quick": quick, "date": now.isoformat(timespec="seconds"),
           "machine": machine(), **result}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    text = json.dumps(doc, indent=2, sort_keys=True)
    path.write_text(text + "\n")
    (RESULTS_DIR / f"latest-{name}.json").write_text(text + "\n")
    return path


async def rate(worker: Callable[[int], Awaitable[object]], total: int, concurrency: int) -> float:
    """Operations per second running worker(i) for i < total with ``concurrency`` calls in flight."""
    counter = iter(range(total))

    async def lane() -> None:
        for i in counter:
            await worker(i)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


def inplane(*args: str) -> dict[str, Any]:
    """Run ``python -m meshd.inplane ARGS`` (meshd's internals measured in their own process) and parse its line.

    bench/ never imports meshd (an import contract); figures that need meshd's internals in the measuring
    process come from that entry point.
    """
    done = subprocess.run([sys.executable, "-m", "meshd.inplane", *args], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"meshd.inplane {args[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
