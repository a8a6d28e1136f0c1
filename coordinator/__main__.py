"""``python -m coordinator``: parse config (file, COORDINATOR_* env, flags) and run the daemon."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from coordinator import config as configuration
from mabeam import logs


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit code 2 for a bad config, 75 for a startup failure a retry may fix (etcd unreachable)."""
    logs.setup("coordinator")
    file, overrides = configuration.parse_args(argv)
    try:
        config = configuration.load(file, overrides=overrides)
    except configuration.ConfigError as error:
        print(f"coordinator: {error}", file=sys.stderr)
        return 2
    logs.setup("coordinator", node=config.node_id)
    from coordinator.daemon import run

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
