"""mabeam benchmarks: ``python -m bench NAME [--quick] [--json]``.

Each benchmark is a module ``bench/NAME.py`` with ``run(quick: bool) -> dict``;
the harness adds machine and run metadata and writes the JSON to
``bench/results/NAME-<utc time>.json`` (and ``latest-NAME.json``, which is
committed and feeds the README table). Baselines are measured in the same run.
"""
