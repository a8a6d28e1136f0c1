"""The SSE reader of ``python -m bench runs``' delivery part, in a process of its own (as a browser would be).

``python -m bench._sse_reader URL``: prints ``ready`` once the stream's headers arrived, then
``<seq> <time.perf_counter()>`` for each event as soon as its blank line is read. ``perf_counter`` is
CLOCK_MONOTONIC on Linux, the same clock in every process, so the appender compares it with its own.
A blocking client on its own: nothing else in this process competes with the read (the appender's gRPC
replies would, in one event loop with it).
"""

from __future__ import annotations

import sys
import time

import httpx


def main(url: str) -> None:
    """Read the stream until it ends or stdin's parent goes away."""
    with httpx.stream("GET", url, timeout=None) as response:
        print("ready", flush=True)
        seq = 0
        for line in response.iter_lines():
            if line.startswith("id: "):
                seq = int(line[4:])
            elif line == "" and seq:
                print(seq, time.perf_counter(), flush=True)
                seq = 0


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except (KeyboardInterrupt, BrokenPipeError):
        pass
