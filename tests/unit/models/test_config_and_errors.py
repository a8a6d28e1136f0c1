"""The [models] config names the bad field; HTTP statuses map to error kinds; service statuses carry reasons."""

from __future__ import annotations

import grpc
import pytest

from agentd.config import ConfigError, load_config
from agentd.models.adapters.base import kind_for_status, provider_message
from agentd.models.service import STATUS, status_for
from agentd.models.types import ErrorKind, ModelError
from mabeam.v1 import common_pb2


@pytest.mark.parametrize(("section", "text"), [
    ({"providers": {"p": {"base_url": "ftp://x"}}}, "models.providers.p.base_url"),
    ({"providers": {"p": {"base_url": "http://x", "kind": "gemini"}}}, "models.providers.p.kind"),
    ({"models": {"m": {"provider": "nobody"}}}, "no provider named 'nobody'"),
    ({"providers": {"p": {"base_url": "http://x"}}, "models": {"m": {"provider": "p"}},
      "routes": {"r": {"primary": "m", "fallbacks": ["ghost"]}}}, "no model named 'ghost'"),
    ({"budgets": {"store": "etcd"}}, "etcd_endpoints"),
    ({"retry": {"max_attempts": 0}}, "models.retry.max_attempts"),
])
def test_bad_models_config_names_the_field(section: dict, text: str) -> None:
    with pytest.raises(ConfigError, match=text.replace("(", r"\(")):
        load_config(env={}, overrides={"models": section})


def test_status_mapping() -> None:
    assert kind_for_status(429) == ErrorKind.RATE_LIMITED
    assert kind_for_status(529) == kind_for_status(503) == kind_for_status(408) == ErrorKind.UNAVAILABLE
    assert kind_for_status(400) == kind_for_status(404) == ErrorKind.REJECTED
    assert kind_for_status(401) == ErrorKind.AUTH
    assert provider_message(b'{"error": {"message": "bad"}}') == "bad"
    assert provider_message(b"<html>oops") == "<html>oops"


def test_every_kind_has_a_status_and_every_reason_is_in_the_contract() -> None:
    reasons = set(common_pb2.ErrorReason.keys())
    for kind in ErrorKind:
        code, reason = STATUS[kind]
        assert reason in reasons, reason
    error = status_for(ModelError(ErrorKind.CIRCUIT_OPEN, "open", retry_after_s=3.0))
    assert error.code == grpc.StatusCode.UNAVAILABLE and error.reason == "CIRCUIT_OPEN" and error.retry_after_s == 3.0


def test_models_from_toml_and_env(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "agentd.toml"
    path.write_text('[models.providers.p]\nbase_url = "http://127.0.0.1:1/v1"\n'
                    '[models.models.m]\nprovider = "p"\ninput_per_1k_usd = 0.5\n')
    config = load_config(str(path), env={})
    assert config.models.models["m"].input_per_1k_usd == 0.5 and config.models.retry.max_attempts == 3
    from_env = load_config(env={"AGENTD_MODELS": '{"providers": {"q": {"kind": "anthropic", '
                                                 '"base_url": "https://api.anthropic.com"}}}'})
    assert from_env.models.providers["q"].kind == "anthropic"
