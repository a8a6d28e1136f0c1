"""``agentd``: run the agent daemon (``python -m agentd --config agentd.toml``; see :mod:`mabeam.daemon`).

Exit code 2 for a bad config (a bad ``[models]`` section included), 75 for a startup failure a retry
may fix (meshd not attachable yet, etcd unreachable, a port held).
"""

from __future__ import annotations

import os

# agentd forks only to exec a worker (a fresh interpreter). gRPC's fork handlers are for processes that go on
# using gRPC after fork; gRPC's fork_support.md says to turn them off when every fork is followed by exec.
# With them on, a worker started while an RPC was in flight (SpawnAgent of a new tenant) is the suspected cause
# of that RPC's connection breaking ("UNAVAILABLE: transport error" in the Rust conformance runner in 3 of ~40
# CI runs, each time as agentd forked; not reproduced on demand).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from collections.abc import Sequence  # noqa: E402

from agentd.config import AgentdConfig  # noqa: E402
from agentd.daemon import run  # noqa: E402
from mabeam import daemon  # noqa: E402

#: agentd's command line (``--config`` names the TOML file); every flag sets the config field it names.
FLAGS = (daemon.Flag("--grpc-address", "grpc_address", "HOST:PORT of the gRPC services (port 0 picks one)"),
         daemon.Flag("--metrics-address", "metrics_address", "HOST:PORT of /metrics (port 0 picks one)"),
         daemon.Flag("--workers", "workers", "shared worker processes (0: one per core)"),
         daemon.Flag("--data-dir", "data_dir", "directory of the checkpoint store (default: a temp dir)"),
         daemon.NODE_ID,
         daemon.Flag("--examples", "examples", "allow the example agent types", kind="switch"),
         daemon.Flag("--log-level", "log_level", "DEBUG, INFO, WARNING or ERROR"),
         daemon.Flag("--meshd-attach", "meshd_attach", "attach to this meshd (ipc://PATH or tcp://127.0.0.1:PORT)"),
         daemon.Flag("--etcd", "etcd", "etcd endpoints HOST:PORT[,HOST:PORT...] (durable runs need them)"),
         daemon.CLUSTER,
         daemon.Flag("--http-address", "http_address", "HOST:PORT of the runs HTTP/SSE face (port 0 picks one)"),
         daemon.Flag("--runs-store", "runs.store", "runs store URL: sqlite:///ABSOLUTE/PATH or postgresql://..."),
         *daemon.SECURITY_FLAGS)

SPEC = daemon.DaemonSpec(kind="agentd", description="mabeam agent runtime daemon", model=AgentdConfig,
                         env_prefix="AGENTD", flags=FLAGS, run=run, log_level_field="log_level")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agentd`` console script."""
    return daemon.main(SPEC, argv)


if __name__ == "__main__":
    raise SystemExit(main())
