"""The multi-host test bed's fixtures: a fresh bed of three namespace hosts per test, always torn down.

Every test here is marked ``hosts`` (``make test-hosts`` runs only these). They
need root and iproute2 (CI runs as root); elsewhere they skip, saying why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mabeam.dev.hostbed import HostBed, unavailable_reason
from mabeam.dev.hostbed.workload import Workload

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.hosts)
            if item.get_closest_marker("timeout") is None:  # a test may ask for longer (test_hosts_units.py)
                item.add_marker(pytest.mark.timeout(360))


@pytest.fixture(scope="session")
def bed_support() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def bed(bed_support: None) -> Iterator[HostBed]:
    """Three hosts (meshd + agentd + coordinator each, CURVE on) over a three-member etcd cluster."""
    bed = HostBed(hosts=3, etcd_members=3).start()
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture
async def workload(bed: HostBed) -> AsyncIterator[Workload]:
    """The scenario workload on the bed (agents, auctions, a load generator per host); stopped at the end."""
    load = Workload(bed)
    try:
        yield load
    finally:
        load.close()
