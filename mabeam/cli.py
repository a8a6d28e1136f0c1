"""The ``mabeam`` command: ``mabeam up`` runs a dev cluster on this host until Ctrl-C or SIGTERM.

``mabeam up --secure`` runs it with tokens, mTLS and CURVE on every daemon (docs/security.md);
``mabeam certs`` and ``mabeam keys`` make and publish what a secured cluster needs.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence

from mabeam.dev.cluster import ClusterError, DevCluster
from mabeam.etcd.embedded import EtcdStartError


def cmd_up(args: argparse.Namespace) -> int:
    """Start etcd (unless --etcd) and N meshd processes; print endpoints; stop all on a signal."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = DevCluster(nodes=args.nodes, base_port=args.base_port or None, etcd=args.etcd, cluster=args.cluster,
                         lease_ttl=args.lease_ttl, run_dir=args.run_dir, agentd=not args.mesh_only,
                         coordinator=not args.mesh_only, secure=args.secure)
    try:
        cluster.start()
    except (ClusterError, EtcdStartError) as error:
        print(f"mabeam up: {error}", file=sys.stderr)
        cluster.stop()
        return 1
    if args.json:  # one line other languages' tools read (SDK conformance runners)
        print(json.dumps(cluster.describe()), flush=True)
    print(f"etcd      {cluster.etcd_endpoint}{' (embedded)' if cluster.embedded else ''}")
    for node in cluster.nodes:
        print(f"{node.node_id:9s} meshd {node.endpoint}  metrics http://{node.metrics_address}/metrics  "
              f"pid {node.proc.pid if node.proc else '-'}")
        for daemon in node.daemons[1:]:
            http = f"  runs http://{daemon.http_endpoint}/v1/runs" if daemon.http_endpoint else ""
            print(f"{'':9s} {daemon.kind} {daemon.endpoint}{http}  pid {daemon.proc.pid if daemon.proc else '-'}")
    print(f"logs      {cluster.run_dir}")
    if cluster.security is not None:
        env = cluster.security.env()
        print("secure    tokens, mTLS and CURVE on every daemon; an admin of tenant 'default':")
        for name, value in env.items():
            print(f"          export {name}={value}")
        print(f"          (more tokens: meshctl token issue --key {cluster.security.directory}/issuer/dev.key "
              f"--cluster {cluster.cluster} --tenant T --role R)")
    print(f"try       meshctl --endpoint {cluster.endpoints[0]} members")
    if cluster.nodes[0].agentd is not None:
        print(f"          meshctl agents --agentd {cluster.nodes[0].agentd.endpoint}")
        print(f"          meshctl run start tasker '{{\"steps\": 3}}' --agentd {cluster.nodes[0].agentd.endpoint}")
    print("Ctrl-C stops everything.", flush=True)
    try:
        while not stop.wait(0.5):
            for daemon in (d for node in cluster.nodes for d in node.daemons):
                if not daemon.alive and not daemon.exit_reported:
                    daemon.exit_reported = True
                    print(f"{daemon.kind} of {daemon.node_id} exited with "
                          f"{daemon.proc.returncode if daemon.proc else '?'}; see {daemon.log_path}", flush=True)
    finally:
        print("stopping...", flush=True)
        cluster.stop()
    print("stopped.")
    return 0


def cmd_fake_llm(args: argparse.Namespace) -> int:
    """Run the local OpenAI/Anthropic-compatible test server until Ctrl-C (dev tooling)."""
    from mabeam.dev.fakellm.__main__ import serve

    return serve(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mabeam`` console script."""
    parser = argparse.ArgumentParser(prog="mabeam", description="mabeam developer commands.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run a dev cluster on this host")
    up.add_argument("--nodes", type=int, default=3, help="number of meshd processes (default 3)")
    up.add_argument("--base-port", type=int, default=7100, help="etcd on P/P+1, node i on P+10*i (default 7100); 0: every daemon binds a port the OS "
                         "chooses and reports it (printed below)")
    up.add_argument("--etcd", default=None, help="use this etcd HOST:PORT[,...] instead of an embedded one")
    up.add_argument("--cluster", default="dev", help="cluster name (etcd key prefix)")
    up.add_argument("--lease-ttl", type=int, default=3, help="membership lease TTL in seconds")
    up.add_argument("--run-dir", default=None, help="where logs and embedded etcd data go (default: a temp dir)")
    up.add_argument("--mesh-only", action="store_true", help="run only meshd on each node (no agentd, coordinator)")
    up.add_argument("--json", action="store_true",
                    help="first print the endpoints and pids as one JSON line (for SDKs and scripts)")
    up.add_argument("--secure", action="store_true",
                    help="tokens, mTLS and CURVE on every daemon (keys and certificates in the run dir)")
    up.set_defaults(func=cmd_up)
    from mabeam.security.admin import add_commands as security_commands

    security_commands(sub)
    from mabeam.dev.fakellm.__main__ import build_parser as fake_llm_flags

    fake = sub.add_parser("fake-llm", help="run the local OpenAI/Anthropic-compatible model server (tests, demo)")
    fake_llm_flags(fake)
    fake.set_defaults(func=cmd_fake_llm)
    args = parser.parse_args(argv)
    if getattr(args, "nodes", 1) < 1:
        parser.error("--nodes must be at least 1")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
