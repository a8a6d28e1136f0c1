"""The shared data-plane client (mabeam.dataplane) is importable on its own: no daemon, no threads."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_attach_client_starts_no_threads_and_loads_no_daemon() -> None:
    # A fresh interpreter, so nothing the test session imported earlier counts.
    probe = (
        "import sys, threading\n"
        "import mabeam.dataplane, mabeam.dataplane.attach, mabeam.dataplane.envelope\n"
        "daemons = sorted(m for m in sys.modules if m.split('.')[0] in ('meshd', 'agentd', 'coordinator'))\n"
        "print(threading.active_count(), daemons)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1 []"
