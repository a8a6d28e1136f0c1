"""The multi-host test bed: hosts as network namespaces on a bridge, each running meshd, agentd and a
coordinator with production-style configs (CURVE on), over a multi-member etcd cluster.

Dev tooling (tests, benchmarks, by hand); never imported by a daemon. Needs
root and iproute2; :func:`netns.unavailable_reason` says why not otherwise.
See docs/testbed.md.

- :class:`bed.HostBed` builds, faults and tears down a bed;
- :mod:`launch` is the pluggable piece that says how a daemon starts on a host;
- :mod:`load` is the load generator run on each host; :mod:`invariants` checks
  what every scenario must keep.
"""

from mabeam.dev.hostbed.bed import Host, HostBed
from mabeam.dev.hostbed.launch import KINDS, ConfigLauncher, HostContext, Launcher, LaunchSpec
from mabeam.dev.hostbed.netns import unavailable_reason

__all__ = ["KINDS", "ConfigLauncher", "Host", "HostBed", "HostContext", "LaunchSpec", "Launcher",
           "unavailable_reason"]
