"""The error contract, checked statically: every reason in the code is in the enum; every status code has an SDK class.

The scan reads the source of every package (daemons, shared code, the SDK) with
``ast`` and collects each error reason it can see — the third argument or the
``reason=`` keyword of an error constructor (``ServiceError``, ``DataPlaneError``,
``ErrorInfo``, ``BidError``, ...), a ``reason = "..."`` class attribute, a
comparison with ``.reason``, and the values of module constants named
``*REASON*`` — and requires each to be a name of ``mabeam.v1.ErrorReason``.
Outside error constructors only upper-case strings count: lower-case ones are
other vocabularies (``SHUTDOWN_REASON = "shutdown"`` is an exit reason,
``action.reason == "cancelled"`` a mechanism's).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grpc
import pytest

from mabeam.errors import DEFAULT_REASONS, ServiceError
from mabeam.v1 import common_pb2
from mabeam_client import errors as sdk

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["mabeam", "meshd", "agentd", "coordinator", "clients/python/mabeam_client"]
REASONS = set(common_pb2.ErrorReason.keys())
ERROR_CALL = re.compile(r"(Error|ErrorInfo|WrongNode|NotFound|Unavailable|Exhausted|Exceeded|Argument|TooLarge)$")
UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _strings(node: ast.AST) -> list[str]:
    """String constants in a constant, tuple, list, set or dict's values."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for item in node.elts for s in _strings(item)]
    if isinstance(node, ast.Dict):
        return [s for value in node.values if value is not None for s in _strings(value)]
    return []


def _callee(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def reasons_in(source: str) -> list[tuple[int, str]]:
    """(line, reason) for every error reason the source names (see the module docstring)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            if ERROR_CALL.search(_callee(node)) and len(node.args) >= 3:
                found += [(node.lineno, s) for s in _strings(node.args[2])]
            for keyword in node.keywords:
                if keyword.arg == "reason":
                    # Mechanism outcomes carry lowercase reasons ("accepted", "cancelled"): not error reasons.
                    found += [(node.lineno, s) for s in _strings(keyword.value) if UPPER.match(s)]
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.Assign | ast.AnnAssign):
                    targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                    if any(isinstance(t, ast.Name) and t.id == "reason" for t in targets) and statement.value:
                        found += [(statement.lineno, s) for s in _strings(statement.value)]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(side, ast.Attribute) and side.attr == "reason" for side in sides):
                found += [(node.lineno, s) for side in sides for s in _strings(side) if UPPER.match(s)]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if any("REASON" in name for name in names):  # lowercase ones are other vocabularies (exits, stops)
                found += [(node.lineno, s) for s in _strings(node.value) if UPPER.match(s)]
    return [(line, reason) for line, reason in found if reason]


def _sources() -> list[Path]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    return [p for p in files if "/v1/" not in str(p) and "_pb2" not in p.name]


def test_the_scan_sees_every_kind_of_reason() -> None:
    source = '''
ServiceError(grpc.StatusCode.NOT_FOUND, "gone", "NOT_A_REASON_1")
raise DataPlaneError("x", code, reason="NOT_A_REASON_2")
class Odd(ServiceError):
    reason = "NOT_A_REASON_3"
if error.reason in ("", "NOT_A_REASON_4"):
    pass
RETRYABLE_REASONS = {"NOT_A_REASON_5"}
info = ErrorInfo(reason="NOT_A_REASON_6", domain="mabeam.io")
Outcome(winner="a", reason="accepted")
'''
    assert sorted(r for _, r in reasons_in(source)) == [f"NOT_A_REASON_{i}" for i in range(1, 7)]


def test_every_reason_in_the_code_is_in_the_enum() -> None:
    unknown = []
    seen = set()
    for path in _sources():
        for line, reason in reasons_in(path.read_text()):
            seen.add(reason)
            if reason not in REASONS:
                unknown.append(f"{path.relative_to(ROOT)}:{line}: {reason}")
    assert not unknown, "reasons not in mabeam.v1.ErrorReason (add them to proto/mabeam/v1/common.proto):\n" + \
        "\n".join(unknown)
    assert {"NAME_TAKEN", "WRONG_NODE", "NOT_DURABLE", "MAILBOX_FULL", "NO_SUCH_AGENT"} <= seen  # the scan works


def test_default_reasons_and_every_error_class_are_in_the_enum() -> None:
    assert set(DEFAULT_REASONS.values()) <= REASONS

    def subclasses(cls: type) -> list[type]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    import agentd.errors  # noqa: F401 - load the branches of the tree
    import mabeam.dataplane.errors  # noqa: F401

    for cls in subclasses(ServiceError):
        assert cls.reason == "" or cls.reason in REASONS, cls


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK], ids=lambda c: c.name)
def test_every_status_code_has_an_sdk_class(code: grpc.StatusCode) -> None:
    cls = sdk.CLASSES[code]
    assert issubclass(cls, sdk.MabeamError) and cls.code == code
    assert cls.__name__.lower().replace("_", "") == code.name.lower().replace("_", "")
