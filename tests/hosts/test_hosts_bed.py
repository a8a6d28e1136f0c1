"""The bed itself: it leaves nothing behind, and a later run cleans up after a run that was killed."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from mabeam.dev.hostbed import HostBed
from mabeam.dev.hostbed.netns import clean_stale


def _names(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_closed_bed_leaves_no_namespace_link_process_or_directory(bed_support: None) -> None:
    bed = HostBed(hosts=2, etcd_members=1, kinds=("meshd",)).start()
    tag, run_dir = bed.network.tag, bed.run_dir
    pids = [d.pid for h in bed.hosts for d in h.daemons.values()] + [m.server.pid for m in bed.etcd.members]
    assert all(pid is not None for pid in pids)
    assert f"mbbed-{tag}-h2" in _names("ip", "netns", "list") and f"mb{tag}br" in _names("ip", "link", "show")
    bed.close()
    assert tag not in _names("ip", "netns", "list") and f"mb{tag}" not in _names("ip", "link", "show")
    assert not run_dir.exists()
    assert not any(_alive(pid) for pid in pids if pid is not None)


def test_what_a_killed_run_left_is_removed_by_the_next(bed_support: None) -> None:
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not _alive(pid))
    tag = f"{dead}z"
    subprocess.run(["ip", "netns", "add", f"mbbed-{tag}-h1"], check=True)
    subprocess.run(["ip", "link", "add", f"mb{tag}br", "type", "bridge"], check=True)
    leftover = Path(tempfile.gettempdir()) / f"mabeam-hostbed-{tag}-x"
    leftover.mkdir()
    try:
        removed = clean_stale()
        assert {f"mbbed-{tag}-h1", f"mb{tag}br", str(leftover)} <= set(removed)
        assert tag not in _names("ip", "netns", "list") and tag not in _names("ip", "link", "show")
        assert not leftover.exists()
    finally:
        subprocess.run(["ip", "netns", "del", f"mbbed-{tag}-h1"], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", f"mb{tag}br"], capture_output=True, check=False)
