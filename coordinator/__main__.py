"""``python -m coordinator``: parse config (file, COORDINATOR_* env, flags) and run the daemon."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from coordinator import config as configuration


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit code 2 for a bad config or a failed startup."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    file, overrides = configuration.parse_args(argv)
    try:
        config = configuration.load(file, overrides=overrides)
    except configuration.ConfigError as error:
        print(f"coordinator: {error}", file=sys.stderr)
        return 2
    from coordinator.daemon import run

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
