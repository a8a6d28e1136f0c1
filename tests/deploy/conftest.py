"""Fixtures for the deploy tests: a shared image (venv + etcd built once by deploy/install.py),
test hosts made of overlay layers, and network namespaces with an address of their own."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mabeam.dev.hostroot import HostRoot, make_image, missing_tools
from mabeam.etcd.embedded import etcd_binary

SOURCE = Path(__file__).resolve().parents[2]


def needs_hosts() -> None:
    """Skip (with the reason) where host roots cannot run: not root, no overlayfs, no util-linux."""
    problems = missing_tools()
    if problems:
        pytest.skip("test hosts need " + "; ".join(problems))


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> HostRoot:
    """/opt/mabeam (the venv deploy/install.py builds from this checkout) and /usr/local/bin/etcd, once."""
    needs_hosts()
    # The system Python, as on a real host: a pyenv one lives under /root, which ProtectHome hides.
    return make_image(tmp_path_factory.mktemp("image"), SOURCE, python="/usr/bin/python3", etcd_binary=etcd_binary())


@pytest.fixture
def netns() -> Iterator:
    """Factory: a network namespace with loopback up and `address` on its loopback; removed at teardown."""
    made: list[str] = []

    def make(address: str) -> str:
        name = f"mabeam-dep-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        for command in (["link", "set", "lo", "up"], ["addr", "add", f"{address}/32", "dev", "lo"]):
            subprocess.run(["ip", "-n", name, *command], check=True)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "pids", name], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], check=False)
