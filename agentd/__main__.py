"""``agentd``: run the agent daemon (``python -m agentd --config agentd.toml``)."""

from __future__ import annotations

import argparse
import sys

from agentd.config import ConfigError, load_config
from mabeam import logs
from mabeam.systemd import EXIT_TEMPFAIL


def main(argv: list[str] | None = None) -> int:
    """Parse flags, load the config (file, AGENTD_* env, flags), run until SIGTERM."""
    parser = argparse.ArgumentParser(prog="agentd", description="mabeam agent runtime daemon")
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--grpc-address")
    parser.add_argument("--metrics-address")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--node-id")
    parser.add_argument("--examples", action="store_true", default=None, help="allow the example agent types")
    parser.add_argument("--log-level")
    parser.add_argument("--meshd-attach", help="attach to this meshd (ipc://PATH or tcp://127.0.0.1:PORT)")
    parser.add_argument("--etcd", help="etcd endpoints HOST:PORT[,HOST:PORT...] (durable runs need them)")
    parser.add_argument("--cluster", help="cluster name (etcd key prefix /mabeam/<cluster>/)")
    parser.add_argument("--http-address", help="HOST:PORT of the runs HTTP/SSE face (port 0 picks one)")
    parser.add_argument("--runs-store", help="runs store URL: sqlite:///ABSOLUTE/PATH or postgresql://...")
    args = parser.parse_args(argv)
    overrides = {"grpc_address": args.grpc_address, "metrics_address": args.metrics_address,
                 "workers": args.workers, "data_dir": args.data_dir, "node_id": args.node_id,
                 "examples": args.examples, "log_level": args.log_level, "meshd_attach": args.meshd_attach,
                 "etcd": args.etcd, "cluster": args.cluster, "http_address": args.http_address,
                 "runs": {"store": args.runs_store} if args.runs_store else None}
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"agentd: {exc}", file=sys.stderr)
        return 2
    logs.setup("agentd", node=config.node_id, level=config.log_level)
    import uvloop

    from agentd.daemon import Daemon
    from mabeam.startup import StartupError, startup_exit

    try:
        uvloop.run(Daemon(config).run())
    except (StartupError, BaseExceptionGroup) as error:
        return startup_exit("agentd", error, EXIT_TEMPFAIL)  # meshd not attachable yet, a port held: retried
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
