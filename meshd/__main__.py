"""``meshd`` command: parse config (file, MESHD_* env, flags) and run the daemon."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mabeam import logs
from meshd import config as configuration
from meshd.daemon import run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshd`` console script."""
    logs.setup("meshd")
    file, overrides = configuration.parse_args(argv)
    try:
        config = configuration.load(file, overrides=overrides)
    except configuration.ConfigError as error:
        print(f"meshd: {error}", file=sys.stderr)
        return 2
    logs.register_secret(config.dataplane.curve_secret_key)
    logs.setup("meshd", node=config.node_id)
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
