"""Policy gates: the most specific rule wins, ties go to the stricter verdict."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agentd.tools.policy import PolicyRule, Scope, Verdict, decide

CALL = {"tenant": "acme", "agent": "planner", "run_id": "run-1"}


def rule(scope: Scope, tool: str, verdict: Verdict, subject: str = "", reason: str = "") -> PolicyRule:
    return PolicyRule(scope=scope, tool=tool, verdict=verdict, subject=subject, reason=reason)


def test_no_rule_gives_the_default() -> None:
    assert decide([], "search", **CALL).verdict is Verdict.ALLOW
    assert decide([], "search", default=Verdict.ASK, **CALL).verdict is Verdict.ASK


def test_narrower_scope_wins() -> None:
    rules = [rule(Scope.TENANT, "payments.*", Verdict.DENY, "acme"),
             rule(Scope.AGENT, "payments.refund", Verdict.ASK, "planner"),
             rule(Scope.RUN, "payments.refund", Verdict.ALLOW, "run-1")]
    assert decide(rules, "payments.refund", **CALL).verdict is Verdict.ALLOW
    assert decide(rules[:2], "payments.refund", **CALL).verdict is Verdict.ASK
    assert decide(rules[:1], "payments.refund", **CALL).verdict is Verdict.DENY


def test_rules_for_other_subjects_do_not_apply() -> None:
    rules = [rule(Scope.TENANT, "*", Verdict.DENY, "other-tenant"),
             rule(Scope.AGENT, "*", Verdict.DENY, "other-agent"),
             rule(Scope.RUN, "*", Verdict.DENY, "run-2")]
    assert decide(rules, "search", **CALL).verdict is Verdict.ALLOW


def test_exact_beats_glob_and_longer_glob_beats_shorter() -> None:
    rules = [rule(Scope.TENANT, "*", Verdict.DENY, "acme"),
             rule(Scope.TENANT, "mail.*", Verdict.ASK, "acme"),
             rule(Scope.TENANT, "mail.read", Verdict.ALLOW, "acme")]
    assert decide(rules, "mail.read", **CALL).verdict is Verdict.ALLOW
    assert decide(rules, "mail.send", **CALL).verdict is Verdict.ASK
    assert decide(rules, "shell", **CALL).verdict is Verdict.DENY


def test_deny_reason_reaches_the_caller() -> None:
    rules = [rule(Scope.DEFAULT, "shell", Verdict.DENY, reason="shell access is not allowed; use the sandbox tool")]
    decision = decide(rules, "shell", **CALL)
    assert decision.verdict is Verdict.DENY and "sandbox" in decision.reason


verdicts = st.sampled_from(list(Verdict))


@given(verdicts, verdicts, st.booleans())
def test_a_tie_goes_to_the_stricter_verdict_whatever_the_order(a: Verdict, b: Verdict, flip: bool) -> None:
    rules = [rule(Scope.AGENT, "t", a, "planner"), rule(Scope.AGENT, "t", b, "planner")]
    if flip:
        rules.reverse()
    order = [Verdict.ALLOW, Verdict.ASK, Verdict.DENY]
    assert decide(rules, "t", **CALL).verdict is max(a, b, key=order.index)


@given(st.lists(st.tuples(st.sampled_from(list(Scope)), st.sampled_from(["t", "*", "t*"]), verdicts), max_size=8),
       verdicts)
def test_adding_a_deny_at_the_narrowest_scope_always_denies(existing: list[tuple[Scope, str, Verdict]],
                                                           default: Verdict) -> None:
    subjects = {Scope.DEFAULT: "", Scope.TENANT: "acme", Scope.AGENT: "planner", Scope.RUN: "run-1"}
    rules = [rule(scope, tool, verdict, subjects[scope]) for scope, tool, verdict in existing]
    rules.append(rule(Scope.RUN, "t", Verdict.DENY, "run-1"))
    assert decide(rules, "t", default=default, **CALL).verdict is Verdict.DENY
