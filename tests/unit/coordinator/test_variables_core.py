"""Variables core: the schema subset, versioned compare-and-set, history bound and outcome extraction."""

from __future__ import annotations

import pytest

from coordinator.variables import (
    SchemaInvalid,
    SchemaViolation,
    VersionMismatch,
    check_schema,
    compare_and_set,
    create,
    extract,
    pruned_version,
    validate,
)

SCHEMA = {"type": "object", "required": ["n"], "additionalProperties": False,
          "properties": {"n": {"type": "integer", "minimum": 0}, "tags": {"type": "array", "items":
                                                                           {"type": "string", "maxLength": 3}}}}


@pytest.mark.parametrize("value", [{"n": 0}, {"n": 5, "tags": ["a", "abc"]}, {"n": 2.0}])
def test_valid_values(value) -> None:
    validate(value, SCHEMA)


@pytest.mark.parametrize("value, where", [({}, "missing required"), ({"n": -1}, "below the minimum"),
                                          ({"n": 1, "x": 1}, "unexpected property"),
                                          ({"n": 1, "tags": ["abcd"]}, "longer than"), ({"n": True}, "expected"),
                                          ([], "expected object")])
def test_invalid_values_name_the_problem(value, where) -> None:
    with pytest.raises(SchemaViolation, match=where):
        validate(value, SCHEMA)


@pytest.mark.parametrize("schema", [[], {"type": "strin"}, {"oneOf": []}, {"minimum": "1"},
                                    {"pattern": "("}, {"properties": {"a": 5}}, {"required": [1]}])
def test_malformed_schemas_are_refused(schema) -> None:
    with pytest.raises(SchemaInvalid):
        check_schema(schema)


def test_compare_and_set_versions() -> None:
    # Each accepted write bumps the version by one; a stale expected version or a bad value changes nothing.
    v1 = create("t", "x", {"type": "integer"}, 1, now_ms=10, history_limit=3)
    v2 = compare_and_set(v1, 1, 2, now_ms=11)
    assert (v2.version, v2.value, v1.value) == (2, 2, 1)
    with pytest.raises(VersionMismatch):
        compare_and_set(v2, 1, 3, now_ms=12)
    with pytest.raises(SchemaViolation):
        compare_and_set(v2, 2, "three", now_ms=12)
    assert pruned_version(v2) is None
    v4 = compare_and_set(compare_and_set(v2, 2, 3, 12), 3, 4, 13)
    assert pruned_version(v4) == 1


def test_extract_dotted_paths() -> None:
    outcome = {"winner": "a", "awards": [{"bidder": "b"}]}
    assert extract(outcome, "winner") == "a"
    assert extract(outcome, "awards.0.bidder") == "b"
    assert extract(outcome, "") == outcome
    with pytest.raises(KeyError):
        extract(outcome, "nope")
