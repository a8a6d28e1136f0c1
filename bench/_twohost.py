"""Two-host benchmarks: two network-namespace hosts of the test bed (docs/testbed.md), one core each.

``python -m bench hol --hosts`` and ``python -m bench dataplane --hosts`` (root and iproute2 needed):

* host A, CPU 0: meshd-1, and the measuring process — the sender, attached to meshd-1 over ipc, and every
  baseline process on A's side — run inside A's namespace under ``taskset -c 0``;
* host B, CPU 1: meshd-2, the receiver, and every baseline process on B's side, inside B's namespace
  under ``taskset -c 1``.

So a message crosses a real (virtual) link between two network stacks, and each "host" has one core of
its own instead of four busy processes sharing two. The outer process (root namespace, unpinned) builds
the bed — one etcd member on host A, meshd on both hosts with the production-style config, CURVE off like
the single-host figures it is compared with — and runs the measurement once per meshd configuration as
``ip netns exec <A> taskset -c 0 python -m bench.<name> hosts-inner ...``, which reads where things are
from ``$MABEAM_BENCH_TWOHOST`` (:class:`TwoHostEnv`) and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

ENV = "MABEAM_BENCH_TWOHOST"
CPU_A, CPU_B = "0", "1"


@dataclass
class Side:
    """Where one side's processes run: the command prefix that puts them there, the address to bind."""

    prefix: list[str]
    address: str


@dataclass
class TwoHostEnv:
    """What the measuring process (inside host A) knows about the two hosts."""

    attach_a: str
    attach_b: str
    node_a: str
    node_b: str
    meshd_a: int
    meshd_b: int
    a: Side
    b: Side

    @classmethod
    def current(cls) -> TwoHostEnv | None:
        """The two hosts this process measures across, or None when it runs on one host."""
        raw = os.environ.get(ENV)
        if not raw:
            return None
        data = json.loads(raw)
        return cls(**{**data, "a": Side(**data["a"]), "b": Side(**data["b"])})


class TwoHosts:
    """The bed of two pinned hosts running meshd only; :meth:`measure` runs a bench's inner half in host A."""

    def __init__(self, dataplane: dict[str, Any] | None = None) -> None:
        from mabeam.dev.hostbed import HostBed, unavailable_reason
        from mabeam.dev.hostbed.launch import ConfigLauncher, PinnedLauncher

        reason = unavailable_reason()
        if reason:
            raise SystemExit(f"--hosts: {reason}")
        self.config = ConfigLauncher(dataplane={"curve": False, **(dataplane or {})})
        self.bed = HostBed(hosts=2, etcd_members=1, kinds=("meshd",),
                           launcher=PinnedLauncher(self.config, {"host-1": CPU_A, "host-2": CPU_B}))

    def __enter__(self) -> TwoHosts:
        self.bed.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bed.close()

    def reconfigure(self, **dataplane: Any) -> None:
        """Restart both meshd with these ``[dataplane]`` settings (on top of the defaults)."""
        self.config.dataplane = {"curve": False, **dataplane}
        for host in self.bed.hosts:
            self.bed.restart(host, "meshd")

    def env(self) -> TwoHostEnv:
        """Where everything is, for the inner process."""
        a, b = self.bed.hosts
        pid_a, pid_b = a.daemons["meshd"].pid, b.daemons["meshd"].pid
        assert pid_a is not None and pid_b is not None
        return TwoHostEnv(a.context.attach_address, b.context.attach_address, a.name, b.name, pid_a, pid_b,
                          Side([], a.address), Side([*b.net.exec_prefix(), "taskset", "-c", CPU_B], b.address))

    def measure(self, module: str, *args: str, timeout: float = 1800.0) -> dict[str, Any]:
        """Run ``python -m <module> hosts-inner ARGS`` inside host A on CPU 0; its last stdout line, parsed."""
        a = self.bed.hosts[0]
        env = {**os.environ, ENV: json.dumps(asdict(self.env()))}
        done = subprocess.run([*a.net.exec_prefix(), "taskset", "-c", CPU_A, sys.executable, "-m", module,
                               "hosts-inner", *args], capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{module} hosts-inner failed ({done.returncode}): {done.stderr.strip()[-3000:]}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
