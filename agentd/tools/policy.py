"""Policy gates for tools: per tenant, agent and run, each tool is ``allow``, ``deny`` or ``ask``.

A pure core. Rules are data (:class:`PolicyRule`); :func:`decide` picks the most
specific rule that matches a call. Specificity, from weakest to strongest:
the default, a tenant rule, an agent rule, a run rule; within one scope an exact
tool name beats a glob (``payments.*``), and a longer glob beats a shorter one.
When two rules of equal specificity disagree the stricter wins
(``deny`` > ``ask`` > ``allow``), so adding a rule can never loosen a tie.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    """What a gate says about one tool call."""

    ALLOW = "allow"
    ASK = "ask"
    DENY = "deny"


class Scope(StrEnum):
    """Where a rule applies; later members are more specific."""

    DEFAULT = "default"
    TENANT = "tenant"
    AGENT = "agent"
    RUN = "run"


_SCOPE_RANK = {Scope.DEFAULT: 0, Scope.TENANT: 1, Scope.AGENT: 2, Scope.RUN: 3}
_STRICTNESS = {Verdict.ALLOW: 0, Verdict.ASK: 1, Verdict.DENY: 2}


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One rule: ``tool`` (a name or an fnmatch glob) gets ``verdict`` in ``scope`` for ``subject``.

    ``subject`` is the tenant id, agent type or run id the scope names (ignored for DEFAULT).
    ``reason`` is shown to the model on ``deny`` and to the approver on ``ask``.
    """

    scope: Scope
    tool: str
    verdict: Verdict
    subject: str = ""
    reason: str = ""

    def matches(self, tool: str, tenant: str, agent: str, run_id: str) -> bool:
        """Whether this rule applies to a call of ``tool`` in that tenant/agent/run."""
        if self.scope is Scope.TENANT and self.subject != tenant:
            return False
        if self.scope is Scope.AGENT and self.subject != agent:
            return False
        if self.scope is Scope.RUN and self.subject != run_id:
            return False
        return fnmatch.fnmatchcase(tool, self.tool)

    def specificity(self) -> tuple[int, int, int]:
        """Sort key: scope, then exact over glob, then the glob's length."""
        exact = not any(ch in self.tool for ch in "*?[")
        return (_SCOPE_RANK[self.scope], 1 if exact else 0, len(self.tool))


@dataclass(frozen=True, slots=True)
class Decision:
    """A gate's answer: the verdict and the rule that gave it (None when the default applied)."""

    verdict: Verdict
    rule: PolicyRule | None
    reason: str

    @property
    def allowed(self) -> bool:
        """True when the call may run without asking anyone."""
        return self.verdict is Verdict.ALLOW


def decide(rules: Iterable[PolicyRule], tool: str, *, tenant: str, agent: str, run_id: str,
           default: Verdict = Verdict.ALLOW) -> Decision:
    """The verdict for one call of ``tool``: the most specific matching rule, stricter on ties."""
    best: PolicyRule | None = None
    for rule in rules:
        if not rule.matches(tool, tenant, agent, run_id):
            continue
        if best is None:
            best = rule
            continue
        key, best_key = rule.specificity(), best.specificity()
        if key > best_key or (key == best_key and _STRICTNESS[rule.verdict] > _STRICTNESS[best.verdict]):
            best = rule
    if best is None:
        return Decision(default, None, f"no rule for tool {tool!r}; default {default.value}")
    reason = best.reason or f"{best.scope.value} rule {best.tool!r}: {best.verdict.value}"
    return Decision(best.verdict, best, reason)
