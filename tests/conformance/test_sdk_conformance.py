"""Every SDK runs the shared conformance scenarios (clients/conformance) against one live cluster.

One cluster for the module (clients/conformance/harness.py): the relay agents of the Go, TypeScript
and Rust SDKs attach to it, then each language's runner runs every scenario; a second, secure cluster
runs the scenarios marked ``secure`` with each runner. A language whose
runner is not built is skipped, unless MABEAM_SDK_CONFORMANCE names it (`make test` lists every
language whose runner it built), when it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients/conformance"))

from harness import LANGS, RELAY_NODES, Harness, cargo_target_dir, runner_built  # noqa: E402

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


def _secure_cluster_available() -> bool:
    import inspect

    from mabeam.dev.cluster import DevCluster

    return "secure" in inspect.signature(DevCluster).parameters


@pytest.fixture(scope="module")
def secure_harness():
    # A second, secure cluster (tokens, mTLS, CURVE): 2 nodes, no relay agents; the runners get its
    # credentials as MABEAM_TOKEN and MABEAM_TLS_* in their environment.
    if not _secure_cluster_available():
        pytest.skip("DevCluster(secure=True) is not in this tree yet (issue 16)")
    started = Harness((), secure=True, nodes=2).start()
    yield started
    started.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("lang", LANGS)
def test_sdk_passes_the_secure_scenarios(secure_harness: Harness, lang: str) -> None:
    if not runner_built(lang):
        if lang in STRICT:
            pytest.fail(f"the {lang} runner is not built (make sdk-build)")
        pytest.skip(f"the {lang} runner is not built (make sdk-build)")
    only = secure_harness.runnable()
    assert only, "no scenario is marked secure"
    outcome = secure_harness.run(lang, only)
    assert outcome.returncode == 0 and not outcome.failed, f"{lang} runner:\n{outcome.output}"
    assert sorted(outcome.passed) == sorted(only), f"{lang} runner:\n{outcome.output}"


#: Each SDK's README examples: (source embedded verbatim in the README, command, working dir).
EXAMPLES = {
    "go": [("clients/go/examples/quickstart/main.go", ["go", "run", "./examples/quickstart"], "clients/go"),
           ("clients/go/examples/greeter/main.go", ["go", "run", "./examples/greeter"], "clients/go")],
    "typescript": [("clients/typescript/examples/quickstart.ts", ["node", "dist/examples/quickstart.js"],
                    "clients/typescript"),
                   ("clients/typescript/examples/greeter.ts", ["node", "dist/examples/greeter.js"],
                    "clients/typescript")],
    "rust": [("clients/rust/mabeam/examples/quickstart.rs", [str(cargo_target_dir() / "debug/examples/quickstart")],
              "clients/rust"),
             ("clients/rust/mabeam/examples/greeter.rs", [str(cargo_target_dir() / "debug/examples/greeter")],
              "clients/rust")],
}
README = {"go": "clients/go/README.md", "typescript": "clients/typescript/README.md", "rust": "clients/rust/README.md"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("lang", list(EXAMPLES))
def test_readme_examples_run_as_written(harness: Harness, lang: str) -> None:
    # The README embeds each example file verbatim; each runs against the live cluster and prints
    # what the README says it prints.
    if not runner_built(lang):
        if lang in STRICT:
            pytest.fail(f"the {lang} SDK is not built (make sdk-build)")
        pytest.skip(f"the {lang} SDK is not built (make sdk-build)")
    readme = (ROOT / README[lang]).read_text()
    nodes = harness.cluster.describe()["nodes"]
    env = {**os.environ, "MABEAM_MESHD": nodes[0]["meshd"], "MABEAM_AGENTD": nodes[1]["agentd"]}
    outputs = []
    for source, command, cwd in EXAMPLES[lang]:
        assert (ROOT / source).read_text() in readme, f"{README[lang]} does not embed {source} as written"
        done = subprocess.run(command, cwd=ROOT / cwd, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{source}:\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    assert "3 members" in outputs[0] and "leader node-" in outputs[0], outputs[0]
    assert "hello, world" in outputs[1], outputs[1]
