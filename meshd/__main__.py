"""``meshd`` command: parse config (file, MESHD_* env, flags) and run the daemon (see :mod:`mabeam.daemon`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mabeam import daemon
from meshd import config
from meshd.daemon import check_binds, run

#: meshd's command line (``--config`` names the TOML file); every flag sets the config field it names.
FLAGS = (daemon.NODE_ID, daemon.CLUSTER, daemon.ETCD, daemon.GRPC_HOST, daemon.GRPC_PORT, daemon.ADVERTISE_HOST,
         daemon.METRICS_PORT, daemon.LEASE_TTL,
         daemon.Flag("--label", "labels", "a node label", kind="pairs"),
         daemon.Flag("--data-port", "dataplane.base_port", "first of the 4 data-plane ports (0: ephemeral)"),
         daemon.Flag("--attach", "dataplane.attach_address", "local attach address (ipc://PATH or tcp://127.0.0.1:PORT)"),
         daemon.Flag("--curve", "dataplane.curve", "CurveZMQ on the data plane", kind="switch"),
         *daemon.SECURITY_FLAGS)

SPEC = daemon.DaemonSpec(kind="meshd", description="The mabeam mesh daemon (one per host).",
                         model=config.MeshdConfig, env_prefix="MESHD", flags=FLAGS, run=run, prepare=check_binds,
                         env_value=config.env_value,
                         secrets=lambda cfg: [cfg.dataplane.curve_secret_key] if cfg.dataplane.curve_secret_key else [])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshd`` console script."""
    return daemon.main(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
