"""Fixtures for the model provider tests: one fake LLM server process for the session, reset per test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mabeam.dev.fakellm.process import FakeLLMProcess  # noqa: E402


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeLLMProcess]:
    """The fake server as a child process on loopback (port 0, reported by its ready line)."""
    with FakeLLMProcess() as server:
        yield server


@pytest.fixture
def fake_llm(fake_llm_server: FakeLLMProcess) -> Iterator[FakeLLMProcess]:
    """The session's fake server with zeroed counters and the default (echo) script."""
    fake_llm_server.reset({})
    yield fake_llm_server
