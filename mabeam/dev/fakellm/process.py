"""Run the fake LLM server as a child process and talk to its controls (tests, demo, benchmarks).

The child binds port 0 and prints the port it got; nothing picks a "free" port
beforehand. ``with FakeLLMProcess() as llm: llm.url ... llm.stats()``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx


class FakeLLMError(RuntimeError):
    """The server did not start (its output is in the message)."""


class FakeLLMProcess:
    """A ``python -m mabeam.dev.fakellm`` child on loopback; ``url`` is its base URL once started."""

    def __init__(self, script: dict[str, Any] | None = None, api_key: str = "", start_timeout: float = 30.0,
                 cpu: int | None = None) -> None:
        self.script = script
        self.api_key = api_key
        self.start_timeout = start_timeout
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.url = ""
        self.port = 0
        self._client: httpx.Client | None = None

    def start(self) -> FakeLLMProcess:
        """Start the child and wait for its ready line."""
        command = [sys.executable, "-m", "mabeam.dev.fakellm", "--port", "0"]
        if self.api_key:
            command += ["--api-key", self.api_key]
        if self.cpu is not None:
            command = ["taskset", "-c", str(self.cpu), *command]
        # Output goes to a file, never a pipe nobody reads (a full pipe would block the server).
        self._log = tempfile.NamedTemporaryFile(prefix="fakellm-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.start_timeout
        text = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = Path(self._log.name).read_text(errors="replace")
            ready = [line for line in text.splitlines() if line.startswith("fake-llm ready ")]
            if ready:
                self.url = ready[0].split()[2]
                self.port = int(self.url.rsplit(":", 1)[1])
                break
            time.sleep(0.02)  # polling the child's ready line, bounded by the deadline
        if not self.url:
            text = Path(self._log.name).read_text(errors="replace")
            self.close()
            raise FakeLLMError("fake-llm did not start:\n" + text)
        self._client = httpx.Client(base_url=self.url, timeout=10.0)
        if self.script is not None:
            self.reset(self.script)
        return self

    @property
    def openai_base(self) -> str:
        """The base URL an OpenAI client takes (``.../v1``)."""
        return f"{self.url}/v1"

    def reset(self, script: dict[str, Any] | None = None) -> None:
        """Zero the counters; load `script` when given."""
        assert self._client is not None
        body = json.dumps(script).encode() if script is not None else b""
        response = self._client.post("/_fake/reset", content=body)
        response.raise_for_status()

    def stats(self) -> dict[str, Any]:
        """The server's request counters."""
        assert self._client is not None
        result: dict[str, Any] = self._client.get("/_fake/stats").json()
        return result

    def requests_for(self, model: str) -> int:
        """How many requests the server served for `model`."""
        return int(self.stats()["by_model"].get(model, 0))

    def close(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL) and close the control client."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            os.unlink(self._log.name)
            self._log = None

    def __enter__(self) -> FakeLLMProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
