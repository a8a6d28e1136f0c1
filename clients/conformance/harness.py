"""Runs the conformance scenarios with every SDK's runner against one live dev cluster.

    .venv/bin/python clients/conformance/harness.py [--langs python,go,typescript,rust] [--only NAME ...]

It starts a 3-node cluster (meshd, agentd, coordinator per node) with the shared launcher
(``mabeam.dev.cluster.DevCluster``), writes its endpoints and pids as JSON (``describe()``, what
``mabeam up --json`` prints), starts the relay agents scenario 08 needs (``relay-go`` on node 1,
``relay-typescript`` on node 2, ``relay-rust`` on node 3, each an external agent of its SDK), then
runs each language's runner in turn. Between runners it restarts any daemon a scenario killed
(scenario 06 kills the active coordinator) and rewrites the JSON. The runners must be built
(``make sdk-build``); ``tests/conformance`` drives this module from pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mabeam.dev.cluster import DevCluster

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "clients/conformance/scenarios"
LANGS = ("python", "go", "typescript", "rust")
#: Where each language's relay agent attaches (node index) for the four-language relay.
RELAY_NODES = {"go": 1, "typescript": 2, "rust": 3}
#: agentd's tool policy for scenario 10: the example tool ``add`` waits for a human's approval.
TOOL_POLICY = [{"tool": "add", "verdict": "ask", "reason": "conformance: a human approves every sum"}]


def cargo_target_dir() -> Path:
    """Where cargo builds the Rust SDK: one target dir per machine, as tools/protogen.sh and the Makefile use."""
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mabeam/cargo-target"


def runner_command(lang: str) -> list[str]:
    """The command line of a language's runner (built by ``make sdk-build``)."""
    if lang == "python":
        return [sys.executable, str(ROOT / "clients/conformance/python_runner.py")]
    if lang == "go":
        return [str(ROOT / "clients/go/.bin/mabeam-conformance")]
    if lang == "typescript":
        return ["node", str(ROOT / "clients/typescript/dist/conformance/runner.js")]
    if lang == "rust":
        return [str(cargo_target_dir() / "debug/mabeam-conformance")]
    raise ValueError(f"unknown language {lang!r}")


def runner_built(lang: str) -> bool:
    """True when the language's runner exists (Python's always does)."""
    command = runner_command(lang)
    return lang == "python" or Path(command[-1]).exists()


@dataclass
class Outcome:
    """What one runner reported: its exit code and PASS/FAIL lines."""

    lang: str
    returncode: int
    output: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Harness:
    """One live cluster, the relay agents, and a way to run each language's runner against them."""

    def __init__(self, relays: tuple[str, ...] = ("go", "typescript", "rust")) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mabeam-conformance-"))
        self.cluster = DevCluster(3, cluster=f"conf{os.getpid()}", lease_ttl=2,
                                  run_dir=self.dir / "cluster", agentd=True, coordinator=True)
        self.cluster_json = self.dir / "cluster.json"
        self.relays = relays
        self.servers: list[subprocess.Popen[str]] = []
        self._saved_policy: str | None = None

    def _set_agentd_env(self) -> None:
        # DevCluster's daemons inherit this process's environment (agentd reads AGENTD_* settings); put it
        # back in close(), since a restarted agentd must see the same policy until then.
        self._saved_policy = os.environ.get("AGENTD_TOOL_POLICY")
        os.environ["AGENTD_TOOL_POLICY"] = json.dumps(TOOL_POLICY)

    def _restore_agentd_env(self) -> None:
        if self._saved_policy is None:
            os.environ.pop("AGENTD_TOOL_POLICY", None)
        else:
            os.environ["AGENTD_TOOL_POLICY"] = self._saved_policy

    def start(self) -> Harness:
        """Start the cluster and the relay agents (each prints "ready" once attached)."""
        try:
            self._set_agentd_env()
            self.cluster.start()
            self.write_json()
            for lang in self.relays:
                self.servers.append(self._serve(lang, f"relay-{lang}", RELAY_NODES[lang]))
        except BaseException:
            self.close()  # nothing may outlive a failed start
            raise
        return self

    def _serve(self, lang: str, name: str, node: int) -> subprocess.Popen[str]:
        log = open(self.dir / f"serve-{lang}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([*runner_command(lang), "serve", "--cluster", str(self.cluster_json),
                                 "--node", str(node), "--name", name], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        ready = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if line.strip() == "ready":
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 60
        while not ready.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{lang} relay agent did not attach; see {log.name}:\n"
                                   + Path(log.name).read_text()[-2000:])
        return proc

    def runnable(self) -> list[str]:
        """Scenarios whose relay agents (``needs``) are running here."""
        names = []
        for path in sorted(SCENARIOS.glob("*.yaml")):
            scenario = yaml.safe_load(path.read_text())
            if all(need.removeprefix("relay-") in self.relays for need in scenario.get("needs", [])):
                names.append(scenario["name"])
        return names

    def write_json(self) -> None:
        """(Re)write the endpoints and pids the runners read."""
        self.cluster_json.write_text(json.dumps(self.cluster.describe(), indent=2))

    def run(self, lang: str, only: list[str] | None = None, timeout: float = 600.0) -> Outcome:
        """Run one language's runner over every scenario; restart killed daemons afterwards."""
        command = [*runner_command(lang), "run", "--cluster", str(self.cluster_json), "--scenarios", str(SCENARIOS),
                   "--run", f"{lang[:2]}{int(time.time() * 1000) % 10**8}"]
        if only:
            command += ["--only", *only]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        outcome = Outcome(lang, proc.returncode, proc.stdout + proc.stderr)
        for line in proc.stdout.splitlines():
            if line.startswith("PASS "):
                outcome.passed.append(line[5:])
            elif line.startswith("FAIL "):
                outcome.failed.append(line[5:])
        if self.cluster.restart_dead():
            self.write_json()
        return outcome

    def close(self) -> None:
        """Stop the relay agents (closing stdin detaches them) and the cluster."""
        for proc in self.servers:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.servers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.cluster.close()
        self._restore_agentd_env()
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--langs", default=",".join(LANGS))
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    # SIGTERM (a timeout, Ctrl-C from a supervisor) unwinds through the finally below, which stops the
    # cluster: its daemons run in sessions of their own and would outlive a harness killed outright.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    langs = [lang for lang in args.langs.split(",") if lang]
    missing = [lang for lang in langs if not runner_built(lang)]
    if missing:
        print(f"runners not built: {', '.join(missing)} (make sdk-build)", file=sys.stderr)
        return 2
    harness = Harness(tuple(lang for lang in RELAY_NODES if lang in langs)).start()
    failed = 0
    try:
        for lang in langs:
            outcome = harness.run(lang, args.only or harness.runnable())
            print(f"== {lang}: {len(outcome.passed)} passed, {len(outcome.failed)} failed")
            print(outcome.output)
            failed += len(outcome.failed) + (outcome.returncode != 0 and not outcome.failed)
    finally:
        harness.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
