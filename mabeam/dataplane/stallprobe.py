"""Event-loop stall probe for benchmarks: off unless ``MABEAM_STALL_PROBE`` names a directory.

bench/hol.py through two meshd showed a ~50 ms urgent tail under bulk that nobody could attribute;
this probe finds which process stalls, when, and in what. With the variable set, each process that
starts one (meshd's data plane, the hol bench's sender and receiver) records:

* ``stall``: the loop woke ``late_us`` after a 1 ms timer was due (wall clock ``end_ns`` at the
  wake-up, so stalls line up across processes and with message timestamps), with how much of the
  time since the previous tick the loop thread ran on a CPU (``cpu_us``) and waited for one on the
  run queue (``runq_us``, from ``/proc/self/task/TID/schedstat``): a stall that is mostly
  ``runq_us`` is CPU contention, mostly ``cpu_us`` is work on the loop, neither is blocking;
* ``gc``: a cyclic garbage collection on the loop thread that took over 1 ms (``gen``, ``us``);
* ``stack``: what the loop thread was doing when a watchdog thread saw it silent for more than
  5 ms (taken while it runs without the GIL — a syscall, a ``zmq_msg_close`` that unmaps a large
  buffer — or once it releases the GIL).

Records are appended as JSON lines to ``<dir>/stall-<pid>-<name>.jsonl`` every 0.2 s by the
watchdog thread, so a process ended by a signal still leaves them. Never on in production: the
watchdog wakes every millisecond.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ENV = "MABEAM_STALL_PROBE"


class StallProbe:
    """A 1 ms timer on ``loop`` that records how late it fires, plus a watchdog thread for stacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: Path, period: float = 0.001,
                 threshold: float = 0.002, stack_after: float = 0.005) -> None:
        self.loop = loop
        self.path = path
        self.period = period
        self.threshold = threshold
        self.stack_after = stack_after
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._schedstat: int | None = None
        self._sched = (0, 0)
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="stall-probe", daemon=True)
        self.ticks = 0
        #: How many times the watchdog took the loop thread's stack.
        self.stacks = 0
        self._gc_started = 0.0

    def start(self) -> None:
        """Arm the timer and start the watchdog (call from the loop's thread)."""
        self._loop_thread = threading.get_ident()
        try:
            # Kept open and re-read with pread: opening it on every tick sometimes blocked for ~15 ms while
            # an I/O thread of the same process faulted in or unmapped a 64 MiB buffer.
            self._schedstat = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
        except OSError:
            self._schedstat = None
        self._sched = self._read_sched()
        self._due = self.loop.time() + self.period
        self._handle = self.loop.call_at(self._due, self._tick)
        self._watchdog.start()
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        """Disarm, stop the watchdog and write what is left."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._stop.set()
        if self._watchdog.is_alive():
            self._watchdog.join(timeout=1.0)
        self._write()
        if self._schedstat is not None:
            os.close(self._schedstat)
            self._schedstat = None

    def _tick(self) -> None:
        now = self.loop.time()
        late = now - self._due
        self._beat = time.monotonic()
        self.ticks += 1
        sched = self._read_sched()
        if late > self.threshold:
            with self._lock:
                self._records.append({"kind": "stall", "end_ns": time.time_ns(), "late_us": round(late * 1e6),
                                      "cpu_us": (sched[0] - self._sched[0]) // 1000,
                                      "runq_us": (sched[1] - self._sched[1]) // 1000})
        self._sched = sched
        self._due = now + self.period
        self._handle = self.loop.call_at(self._due, self._tick)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_started
        if took > 0.001 and threading.get_ident() == self._loop_thread:
            with self._lock:
                self._records.append({"kind": "gc", "end_ns": time.time_ns(), "gen": info["generation"],
                                      "us": round(took * 1e6), "collected": info["collected"]})

    def _read_sched(self) -> tuple[int, int]:
        if self._schedstat is None:
            return (0, 0)
        on_cpu, waiting, _ = os.pread(self._schedstat, 128, 0).split()
        return int(on_cpu), int(waiting)

    def _watch(self) -> None:
        captured_for = 0.0
        last_write = time.monotonic()
        while not self._stop.wait(self.period):
            now = time.monotonic()
            beat = self._beat
            if now - beat > self.stack_after and beat != captured_for:
                captured_for = beat
                frame = sys._current_frames().get(self._loop_thread)
                stack = traceback.format_stack(frame, limit=12) if frame is not None else []
                with self._lock:
                    self._records.append({"kind": "stack", "at_ns": time.time_ns(),
                                          "silent_us": round((now - beat) * 1e6),
                                          "stack": [line.strip() for line in stack]})
                    self.stacks += 1
            if now - last_write > 0.2:
                last_write = now
                self._write()

    def _write(self) -> None:
        with self._lock:
            records, self._records = self._records, []
        if records:
            with self.path.open("a") as out:
                for record in records:
                    out.write(json.dumps(record) + "\n")


def start_from_env(name: str) -> StallProbe | None:
    """Start a probe on the running loop when ``MABEAM_STALL_PROBE`` is set; else None."""
    directory = os.environ.get(ENV)
    if not directory:
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    probe = StallProbe(asyncio.get_running_loop(), Path(directory) / f"stall-{os.getpid()}-{name}.jsonl")
    probe.start()
    return probe
