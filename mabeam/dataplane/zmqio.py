"""ZeroMQ helpers every data-plane process needs (meshd and attached clients alike).

Nothing here runs at import time: whether this host lets a thread switch itself
to SCHED_IDLE is probed once, on first use (:func:`sched_idle_ok`), because
importing the shared client must start no threads.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from typing import Any

import zmq

_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: enum arithmetic per frame showed up in send profiles
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
SCHED_IDLE = getattr(os, "SCHED_IDLE", 5)


@functools.cache
def sched_idle_ok() -> bool:
    """Whether a thread may switch itself to SCHED_IDLE here (libzmq aborts if setting it fails).

    Probed once per process in a short-lived thread, on first call.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "sched_setscheduler"):
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, SCHED_IDLE, os.sched_param(0))  # this thread only (Linux)
            ok.append(True)
        except OSError:
            ok.append(False)

    thread = threading.Thread(target=probe, name="sched-idle-probe")
    thread.start()
    thread.join()
    return bool(ok and ok[0])


def send_frames(sock: zmq.Socket[Any], frames: list[bytes | memoryview], copy_threshold: int = 65536) -> None:
    """Send one multipart message with NOBLOCK (raises ``zmq.Again`` only before the first frame goes).

    Frames above ``copy_threshold`` go zero-copy (STACK-NOTES: copy=False pays only above ~64 KiB).
    """
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, _MORE if i < last else _NOBLOCK, copy=len(frame) <= copy_threshold)
