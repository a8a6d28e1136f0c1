"""Every SDK runs the shared conformance scenarios (clients/conformance) against one live cluster.

One cluster for the module (clients/conformance/harness.py): the relay agents of the Go, TypeScript
and Rust SDKs attach to it, then each language's runner runs every scenario. A language whose
runner is not built is skipped, unless MABEAM_SDK_CONFORMANCE names it (`make test` lists every
language whose runner it built), when it fails.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients/conformance"))

from harness import LANGS, RELAY_NODES, Harness, runner_built  # noqa: E402

STRICT = set(os.environ.get("MABEAM_SDK_CONFORMANCE", "").split())


@pytest.fixture(scope="module")
def harness():
    built = [lang for lang in RELAY_NODES if runner_built(lang)]
    started = Harness(tuple(built)).start()
    yield started
    started.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("lang", LANGS)
def test_sdk_passes_the_conformance_scenarios(harness: Harness, lang: str) -> None:
    if not runner_built(lang):
        if lang in STRICT:
            pytest.fail(f"the {lang} runner is not built (make sdk-build)")
        pytest.skip(f"the {lang} runner is not built (make sdk-build)")
    outcome = harness.run(lang, harness.runnable())
    assert outcome.returncode == 0 and not outcome.failed, f"{lang} runner:\n{outcome.output}"
    assert outcome.passed, f"{lang} runner ran nothing:\n{outcome.output}"
