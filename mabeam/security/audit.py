"""The audit trail: every refused request and every cross-tenant admin action, logged and counted.

One :class:`Audit` per daemon. Each event is one log line on the ``mabeam.audit``
logger (WARNING for refusals, INFO for admin actions across tenants) with the
tenant, principal, method, reason and peer, and one count in the daemon's
``/metrics``:

- ``mabeam_auth_refused_total{tenant,method,reason}`` — refused for a security reason
  (no or bad token, a role that does not grant the method, another tenant named or
  reached, a quota);
- ``mabeam_admin_cross_tenant_total{tenant,target_tenant,method}`` — an admin acting
  in a tenant other than its token's.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from mabeam.security.tokens import Principal

log = logging.getLogger("mabeam.audit")

#: The ErrorReasons that are refusals for a security reason (audited when a request ends with one).
AUDITED_REASONS = frozenset({"TOKEN_MISSING", "TOKEN_INVALID", "TOKEN_EXPIRED", "ROLE_REQUIRED",
                             "TENANT_FORBIDDEN", "QUOTA_EXCEEDED"})


def _field(value: str) -> str:
    """A logfmt value: quoted when it has spaces or quotes."""
    if not value:
        return '""'
    if any(c in value for c in ' "='):
        return '"' + value.replace('"', "'") + '"'
    return value


class Audit:
    """Logs and counts refusals and cross-tenant admin actions of one daemon (see the module docstring).

    With a ``registry`` the audit exports its counters there; agentd's collector uses :func:`audit_families`.
    """

    def __init__(self, daemon: str, registry: CollectorRegistry | None = None) -> None:
        self.daemon = daemon
        #: (tenant, method, reason) -> refusals
        self.refused: collections.Counter[tuple[str, str, str]] = collections.Counter()
        #: (tenant, target tenant, method) -> admin actions across tenants
        self.cross_tenant: collections.Counter[tuple[str, str, str]] = collections.Counter()
        if registry is not None:
            registry.register(_AuditCollector(self))

    def refuse(self, method: str, reason: str, principal: Principal | None, peer: str = "", detail: str = "") -> None:
        """A request refused for ``reason`` (an ErrorReason name)."""
        tenant = principal.tenant if principal is not None else ""
        self.refused[(tenant, method, reason)] += 1
        log.warning("audit=refused daemon=%s tenant=%s principal=%s method=%s reason=%s peer=%s detail=%s",
                    self.daemon, _field(tenant), _field(principal.subject if principal else ""), method, reason,
                    _field(peer), _field(detail))

    def cross(self, principal: Principal, target_tenant: str, method: str, peer: str = "") -> None:
        """An admin acted in ``target_tenant``, not its token's tenant."""
        self.cross_tenant[(principal.tenant, target_tenant, method)] += 1
        log.info("audit=cross_tenant daemon=%s tenant=%s target_tenant=%s principal=%s method=%s peer=%s",
                 self.daemon, _field(principal.tenant), _field(target_tenant), _field(principal.subject), method,
                 _field(peer))


def audit_families(audits: Iterable[Audit]) -> list[Metric]:
    """The audit counters summed over several audits (a daemon whose collector aggregates instances: agentd)."""
    refused_total: collections.Counter[tuple[str, str, str]] = collections.Counter()
    cross_total: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for audit in audits:
        refused_total.update(audit.refused)
        cross_total.update(audit.cross_tenant)
    refused = CounterMetricFamily("mabeam_auth_refused", "Requests refused for a security reason "
                                  "(token, role, tenant, quota), by the caller's tenant, method and ErrorReason",
                                  labels=["tenant", "method", "reason"])
    for (tenant, method, reason), count in sorted(refused_total.items()):
        refused.add_metric([tenant, method, reason], count)
    cross = CounterMetricFamily("mabeam_admin_cross_tenant", "Admin requests acting in a tenant other than "
                                "the token's", labels=["tenant", "target_tenant", "method"])
    for (tenant, target, method), count in sorted(cross_total.items()):
        cross.add_metric([tenant, target, method], count)
    return [refused, cross]


class _AuditCollector:
    def __init__(self, audit: Audit) -> None:
        self.audit = audit

    def collect(self) -> Iterator[Metric]:
        yield from audit_families([self.audit])
