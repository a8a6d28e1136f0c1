"""Runs the conformance scenarios with every SDK's runner against one live dev cluster.

    .venv/bin/python clients/conformance/harness.py [--langs python,go,typescript,rust] [--only NAME ...]

It starts a 3-node cluster (meshd, agentd, coordinator per node) with the shared launcher
(``mabeam.dev.cluster.DevCluster``), writes its endpoints and pids as JSON (``describe()``, what
``mabeam up --json`` prints), starts the relay agents scenario 08 needs (``relay-go`` on node 1,
``relay-typescript`` on node 2, ``relay-rust`` on node 3, each an external agent of its SDK), then
runs each language's runner in turn. Scenarios kill and restart daemons through the harness's
control channel (:class:`Control`; scenario 12 restarts node 2's meshd under a live client). Between
runners it restarts any daemon a scenario left dead (scenarios 06 and 11 kill the active coordinator),
rewrites the JSON and waits until the relay agents are attached again. The agentds get a tool policy
that gates the example tool ``add`` (scenario 10). The runners must be built (``make sdk-build``);
``tests/conformance`` drives this module from pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socketserver
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


class Control(socketserver.ThreadingTCPServer):
    """Kills and restarts daemons when a runner asks (ops ``kill_daemon``/``restart_daemon``); on the secure
    cluster it also issues tokens (``issue_token``: tenant, roles).

    One JSON object a line on a loopback TCP connection (port 0; its address is ``control`` in the
    cluster JSON): ``{"op": "kill_daemon"|"restart_daemon", "args": {"node": 2 | "node-2", "kind":
    "meshd"|"agentd"|"coordinator"}}``, answered by ``{"ok": true, "result": {...}}`` or ``{"ok": false,
    "error": "..."}``. A runner cannot restart a daemon itself: the harness owns the processes (a restart
    binds the daemon's old ports, and the harness stops it at the end).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ControlHandler)
        threading.Thread(target=self.serve_forever, daemon=True, name="conformance-control").start()

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"

    def handle_request_line(self, line: bytes) -> dict[str, object]:
        """One request: the daemon named by node (index from 1, or node id) and kind; kill -9 or restart it."""
        try:
            request = json.loads(line)
            op, args = request["op"], request.get("args") or {}
            if op == "issue_token":  # a token of the secure cluster for a tenant and roles
                security = getattr(self.harness.cluster, "security", None)
                if security is None:
                    raise ValueError("issue_token needs the secure cluster")
                return {"ok": True, "result": {"token": security.token(args["tenant"], args.get("roles") or ["agent"])}}
            nodes = self.harness.cluster.nodes
            node = args["node"]
            found = [n for i, n in enumerate(nodes, 1) if node in (i, n.node_id, str(i))]
            daemons = [d for n in found for d in n.daemons if d.kind == args["kind"]]
            if not daemons:
                raise ValueError(f"no {args['kind']!r} daemon on node {node!r}")
            daemon = daemons[0]
            with self.lock:
                if op == "kill_daemon":
                    self.harness.cluster.kill_daemon(daemon)
                elif op == "restart_daemon":
                    if not daemon.alive:
                        self.harness.cluster.restart_daemon(daemon)
                else:
                    raise ValueError(f"unknown control op {op!r}")
                self.harness.write_json()
            return {"ok": True, "result": {"node_id": daemon.node_id, "kind": daemon.kind, "pid": daemon.pid or 0}}
        except Exception as error:  # noqa: BLE001 - any failure goes back to the runner, which fails its step
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}


class ControlHandler(socketserver.StreamRequestHandler):
    """Answers each request line of one connection."""

    server: Control

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(json.dumps(self.server.handle_request_line(line)).encode() + b"\n")
            self.wfile.flush()


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

    def __init__(self, relays: tuple[str, ...] = ("go", "typescript", "rust"), secure: bool = False,
                 nodes: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mabeam-conformance-"))
        #: A secure cluster (tokens, mTLS, CURVE) runs only the scenarios marked ``secure: true``, and the
        #: runners get its credentials the way a user's process would: MABEAM_TOKEN and MABEAM_TLS_*.
        self.secure = secure
        self.cluster = DevCluster(nodes, cluster=f"conf{'s' if secure else ''}{os.getpid()}", lease_ttl=2,
                                  run_dir=self.dir / "cluster", agentd=True, coordinator=True,
                                  **({"secure": True} if secure else {}))
        self.cluster_json = self.dir / "cluster.json"
        self.relays = relays
        self.servers: list[subprocess.Popen[str]] = []
        self._saved_policy: str | None = None
        self.control: Control | None = None

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
            self.control = Control(self)
            self.write_json()
            for lang in self.relays:
                self.servers.append(self._serve(lang, f"relay-{lang}", RELAY_NODES[lang]))
        except BaseException:
            self.close()  # nothing may outlive a failed start
            raise
        return self

    def env(self) -> dict[str, str]:
        """The runners' environment: this one, plus the secure cluster's MABEAM_TOKEN and MABEAM_TLS_*."""
        security = getattr(self.cluster, "security", None)
        return {**os.environ, **(security.env() if security is not None else {})}

    def _serve(self, lang: str, name: str, node: int) -> subprocess.Popen[str]:
        log = open(self.dir / f"serve-{lang}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([*runner_command(lang), "serve", "--cluster", str(self.cluster_json),
                                 "--node", str(node), "--name", name], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=self.env())
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
        """Scenarios whose relay agents (``needs``) are running here, secure ones on a secure cluster only."""
        names = []
        for path in sorted(SCENARIOS.glob("*.yaml")):
            scenario = yaml.safe_load(path.read_text())
            if bool(scenario.get("secure", False)) != self.secure:
                continue
            if all(need.removeprefix("relay-") in self.relays for need in scenario.get("needs", [])):
                names.append(scenario["name"])
        return names

    def write_json(self) -> None:
        """(Re)write the endpoints and pids the runners read."""
        described = self.cluster.describe()
        if self.control is not None:
            described["control"] = self.control.address
        tmp = self.cluster_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(described, indent=2))
        tmp.replace(self.cluster_json)  # a runner starting now reads the old file or the new one, never half

    def run(self, lang: str, only: list[str] | None = None, timeout: float = 600.0) -> Outcome:
        """Run one language's runner over every scenario; restart killed daemons afterwards."""
        command = [*runner_command(lang), "run", "--cluster", str(self.cluster_json), "--scenarios", str(SCENARIOS),
                   "--run", f"{lang[:2]}{int(time.time() * 1000) % 10**8}"]
        if only:
            command += ["--only", *only]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=self.env())
        outcome = Outcome(lang, proc.returncode, proc.stdout + proc.stderr)
        for line in proc.stdout.splitlines():
            if line.startswith("PASS "):
                outcome.passed.append(line[5:])
            elif line.startswith("FAIL "):
                outcome.failed.append(line[5:])
        if outcome.returncode != 0:  # what the daemons said, for the failure message (CI keeps no run dir)
            outcome.output += self.daemon_tails()
        if self.cluster.restart_dead():
            self.write_json()
        self.wait_relays()
        return outcome

    def _client_security(self) -> dict[str, object]:
        security = getattr(self.cluster, "security", None)
        return {"security": security.client()} if security is not None else {}

    def wait_relays(self, timeout: float = 60.0) -> None:
        """Wait until every relay agent's name resolves again (a scenario that kills a meshd detaches the relay
        attached to it; the SDK re-attaches with backoff, and the next runner's relay scenario needs it)."""
        if not self.relays:
            return
        from mabeam.dev.testing import async_wait_until
        from mabeam_client.mesh import MeshClient

        async def registered() -> None:
            async with MeshClient(self.cluster.nodes[0].meshd.endpoint, **self._client_security()) as mesh:
                async def all_found() -> bool:
                    for lang in self.relays:
                        await mesh.lookup(f"relay-{lang}")
                    return True

                await async_wait_until(all_found, timeout, interval=0.2, what="the relay agents are attached")

        asyncio.run(registered())

    def daemon_tails(self, chars: int = 1500) -> str:
        """The end of every daemon's log, each headed by whether it still runs."""
        parts = []
        for node in self.cluster.nodes:
            for daemon in node.daemons:
                state = "running" if daemon.alive else f"EXITED {daemon.proc.returncode if daemon.proc else ''}"
                parts.append(f"\n--- {daemon.kind} of {node.node_id} ({state}) ---\n{daemon.output()[-chars:]}")
        return "".join(parts)

    def close(self) -> None:
        """Stop the relay agents (closing stdin detaches them) and the cluster."""
        if self.control is not None:
            self.control.shutdown()
            self.control.server_close()
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
    parser.add_argument("--secure", action="store_true", help="a secure cluster and the secure scenarios")
    args = parser.parse_args()
    # SIGTERM (a timeout, Ctrl-C from a supervisor) unwinds through the finally below, which stops the
    # cluster: its daemons run in sessions of their own and would outlive a harness killed outright.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    langs = [lang for lang in args.langs.split(",") if lang]
    missing = [lang for lang in langs if not runner_built(lang)]
    if missing:
        print(f"runners not built: {', '.join(missing)} (make sdk-build)", file=sys.stderr)
        return 2
    relays = () if args.secure else tuple(lang for lang in RELAY_NODES if lang in langs)
    harness = Harness(relays, secure=args.secure, nodes=2 if args.secure else 3).start()
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
