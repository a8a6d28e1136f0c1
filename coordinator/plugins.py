"""Mechanism plugins: extra kinds the coordinator loads at startup, from outside this package.

A mechanism kind is one module: a :class:`~coordinator.mechanisms.base.Mechanism`
subclass with its ``kind`` and ``family`` (see docs/mechanisms/README.md).
Defining the class registers it, so loading a plugin means importing its module.
The coordinator imports, before it serves:

1. every installed entry point of group ``mabeam.mechanisms`` (a package
   declares ``[project.entry-points."mabeam.mechanisms"] raffle = "my_pkg.raffle"``);
2. every module named by ``mechanism_modules`` (``--mechanism-module``,
   repeatable, or ``COORDINATOR_MECHANISM_MODULES=a,b``): a dotted module name
   on ``sys.path``, or the path of a ``.py`` file.

Every coordinator node of a cluster must load the same plugins: a leader that
finds an instance of a kind it has not loaded refuses to take over.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from coordinator.mechanisms.base import registered_kinds

#: The entry-point group installed packages declare their mechanism modules in.
ENTRY_POINT_GROUP = "mabeam.mechanisms"


class PluginError(Exception):
    """A mechanism plugin could not be loaded; the message names it and why."""


def load_mechanisms(modules: Sequence[str] = ()) -> list[str]:
    """Import the installed mechanism plugins and ``modules``; returns the kinds they registered, sorted."""
    before = set(registered_kinds())
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as error:  # a plugin's own bug: report it by name, don't start half-configured
            raise PluginError(f"mechanism plugin {point.name!r} ({point.value}) failed to load: "
                              f"{type(error).__name__}: {error}") from None
    for spec in modules:
        _import(spec)
    return sorted(set(registered_kinds()) - before)


def _import(spec: str) -> None:
    try:
        if spec.endswith(".py") or "/" in spec:
            path = Path(spec).resolve()
            if not path.is_file():
                raise PluginError(f"mechanism module {spec!r}: no such file")
            # A stable, unique module name per file: pydantic resolves the models' annotations through it.
            name = f"mabeam_mechanism_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            if name in sys.modules:
                return
            loader = importlib.util.spec_from_file_location(name, path)
            if loader is None or loader.loader is None:
                raise PluginError(f"mechanism module {spec!r}: not a Python file")
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            try:
                loader.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            importlib.import_module(spec)
    except PluginError:
        raise
    except Exception as error:
        raise PluginError(f"mechanism module {spec!r} failed to load: {type(error).__name__}: {error}") from None
