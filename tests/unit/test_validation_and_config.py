"""Registry input validation and meshd config errors name the problem."""

import pytest

from mabeam.errors import FieldViolation
from meshd import config as configuration
from meshd.validation import check_id, check_metadata, check_name


@pytest.mark.parametrize("name", ["a", "planner", "agent-7", "team.alpha:lead@eu", "_x", "x" * 128])
def test_valid_names(name: str) -> None:
    problems: list[FieldViolation] = []
    check_name("name", name, problems)
    assert problems == []


@pytest.mark.parametrize(("name", "fragment"), [
    ("", "must not be empty"),
    ("x" * 129, "129 characters"),
    ("has space", "not a valid name"),
    ("a/b", "not a valid name"),
    ("-lead", "not a valid name"),
    ("ünï", "not a valid name"),
])
def test_invalid_names(name: str, fragment: str) -> None:
    problems: list[FieldViolation] = []
    check_name("name", name, problems)
    assert len(problems) == 1 and problems[0].field == "name" and fragment in problems[0].description


def test_metadata_limits() -> None:
    problems: list[FieldViolation] = []
    check_metadata("metadata", {f"k{i}": "v" for i in range(33)}, problems)
    check_metadata("metadata", {"big": "x" * 5000}, problems)
    check_metadata("metadata", {"bad key": "v"}, problems)
    assert [p.description.split(";")[0] for p in problems[:2]] == ["has 33 entries", "is 5003 bytes"]
    assert problems[2].field.startswith("metadata[")


def test_ids() -> None:
    problems: list[FieldViolation] = []
    check_id("tenant", "", problems, required=False)
    assert problems == []
    check_id("tenant", "a" * 65, problems)
    assert "limit is 64" in problems[0].description


def test_config_precedence(tmp_path) -> None:
    toml = tmp_path / "meshd.toml"
    toml.write_text('node_id = "from-file"\nlease_ttl = 5\nlabels = { zone = "a" }\n')
    cfg = configuration.load(toml, env={"MESHD_LEASE_TTL": "7"}, overrides={"node_id": "from-flag"})
    assert (cfg.node_id, cfg.lease_ttl, cfg.labels) == ("from-flag", 7, {"zone": "a"})


@pytest.mark.parametrize(("data", "field"), [
    ({"lease_ttl": 1}, "lease_ttl"),
    ({"grpc_port": 70000}, "grpc_port"),
    ({"etcd": "localhost"}, "etcd"),
    ({"node_id": "no/slash"}, "node_id"),
    ({"no_such_field": 1}, "no_such_field"),
])
def test_bad_config_names_the_field(data: dict, field: str) -> None:
    with pytest.raises(configuration.ConfigError) as info:
        configuration.load(None, env={}, overrides=data)
    assert f"  {field}:" in str(info.value)


def test_unreadable_config_file(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("node_id = \n")
    with pytest.raises(configuration.ConfigError, match="not valid TOML"):
        configuration.load(bad, env={})


def test_production_example_config_is_valid(tmp_path) -> None:
    from pathlib import Path

    # The config names files `make install` places under /etc/mabeam (certificates, token keys): the same
    # config with those paths under a temp dir where they exist.
    text = (Path(__file__).parents[2] / "deploy" / "meshd.production.toml").read_text()
    etc = tmp_path / "etc-mabeam"
    (etc / "tls").mkdir(parents=True)
    (etc / "token-keys").mkdir()
    for name in ("host-a.crt", "host-a.key", "ca.crt"):
        (etc / "tls" / name).write_text("")
    config = tmp_path / "meshd.toml"
    config.write_text(text.replace("/etc/mabeam/", f"{etc}/"))
    cfg = configuration.load(config, env={})
    # gRPC on loopback (no TLS yet), the CURVE data plane on the host's address (tests/deploy checks the rest).
    assert cfg.cluster == "prod" and len(cfg.etcd) == 3 and cfg.advertised == "127.0.0.1"
    assert cfg.dataplane.curve and cfg.dataplane.bind_host == "10.0.0.11"
