"""``python -m coordinator``: parse config (file, COORDINATOR_* env, flags) and run the daemon (:mod:`mabeam.daemon`).

Exit code 2 for a bad config or a mechanism plugin that does not load, 75 for a startup failure a retry may
fix (etcd unreachable, the port held).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from coordinator import config
from coordinator.daemon import load_plugins, run
from mabeam import daemon

#: The coordinator's command line (``--config`` names the TOML file); every flag sets the config field it names.
FLAGS = (daemon.NODE_ID, daemon.CLUSTER, daemon.ETCD, daemon.GRPC_HOST, daemon.GRPC_PORT, daemon.ADVERTISE_HOST,
         daemon.METRICS_PORT, daemon.LEASE_TTL,
         daemon.Flag("--mechanism-module", "mechanism_modules",
                     "extra mechanism kinds: a dotted module name or a .py path", kind="append"),
         *daemon.SECURITY_FLAGS)

SPEC = daemon.DaemonSpec(kind="coordinator", description="The mabeam coordinator (active/standby).",
                         model=config.CoordinatorConfig, env_prefix="COORDINATOR", flags=FLAGS, run=run,
                         prepare=load_plugins)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m coordinator``."""
    return daemon.main(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
