"""Entry point: ``python -m bench NAME [--quick] [--json]`` (NAME is a module in bench/)."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import sys
from pathlib import Path

from bench.common import write_result


def available() -> list[str]:
    """Benchmark names: the modules of this package that define ``run``."""
    names = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name in {"common", "__main__"} or info.name.startswith("_"):
            continue
        names.append(info.name)
    return sorted(names)


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark, print its result, write JSON to bench/results/."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=available())
    parser.add_argument("--quick", action="store_true", help="a short run (at most about 60 s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--hosts", action="store_true",
                        help="two-host mode (hol, dataplane): two network-namespace hosts of one core each "
                             "(needs root; bench/_twohost.py); results go to NAME-hosts")
    args = parser.parse_args(argv)
    module = importlib.import_module(f"bench.{args.name}")
    if args.hosts:
        if "hosts" not in inspect.signature(module.run).parameters:
            parser.error(f"bench {args.name} has no two-host mode")
        result = module.run(quick=args.quick, hosts=True)
    else:
        result = module.run(quick=args.quick)
    path = write_result(f"{args.name}-hosts" if args.hosts else args.name, result, args.quick)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        for key, value in sorted(result.items()):
            print(f"{key:40s} {value}")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
