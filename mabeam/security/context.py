"""The caller of the request being served, and the tenant rules every servicer applies.

:class:`~mabeam.security.interceptor.AuthInterceptor` sets a :class:`CallContext`
(the verified principal, the method, the daemon's audit) in a context variable
before the servicer runs; the servicer's task and every task it starts see it.
Servicers never read a tenant from a request directly; they ask:

- :func:`tenant_for` — the tenant a request acts in, from its ``tenant`` field:
  empty means the token's tenant; the token's own tenant is fine; another tenant
  is allowed to an admin (audited) and refused to anyone else (PERMISSION_DENIED,
  ``TENANT_FORBIDDEN``);
- :func:`visible` — whether a resource found by id (an instance, a run, an agent)
  may be shown to the caller: its own tenant's, or any for an admin (audited).
  A servicer answers NOT_FOUND for an invisible one, exactly as for one that does
  not exist, so another tenant's ids leak nothing.

Without security configured there is no call context: :func:`tenant_for` returns
the request's tenant (or ``default``) and :func:`visible` is always true — the
behaviour of an unsecured dev cluster.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

import grpc

from mabeam.errors import ServiceError
from mabeam.security.audit import Audit
from mabeam.security.rights import required_role
from mabeam.security.tokens import Principal, TokenError, TokenVerifier, missing_token

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who is calling which method, and where the daemon's audit events go."""

    principal: Principal
    method: str
    audit: Audit
    peer: str = ""


_CALL: ContextVar[CallContext | None] = ContextVar("mabeam_call", default=None)


def current() -> CallContext | None:
    """The call context of the request being served (None without security)."""
    return _CALL.get()


def principal() -> Principal | None:
    """The verified caller of the request being served (None without security)."""
    call = _CALL.get()
    return None if call is None else call.principal


def enter(call: CallContext | None) -> object:
    """Make ``call`` the current call context (the interceptor does this); returns a token for :func:`leave`."""
    return _CALL.set(call)


def leave(token: object) -> None:
    """Restore the call context :func:`enter` replaced."""
    _CALL.reset(token)  # type: ignore[arg-type]


def tenant_for(requested: str) -> str:
    """The tenant a request acts in, given its ``tenant`` field (see the module docstring)."""
    call = _CALL.get()
    if call is None:
        return requested or DEFAULT_TENANT
    own = call.principal.tenant
    if not requested or requested == own:
        return own
    if call.principal.is_admin:
        call.audit.cross(call.principal, requested, call.method, call.peer)
        return requested
    raise ServiceError(grpc.StatusCode.PERMISSION_DENIED,
                       f"the token is for tenant {own!r}; acting in tenant {requested!r} needs an admin token",
                       "TENANT_FORBIDDEN", metadata={"tenant": own})


def visible(resource_tenant: str) -> bool:
    """Whether a resource of ``resource_tenant`` (found by id) may be shown to the caller (see the module docstring).

    An invisible one is audited as a cross-tenant attempt (reason TENANT_FORBIDDEN, answered as NOT_FOUND).
    """
    call = _CALL.get()
    if call is None:
        return True
    resource_tenant = resource_tenant or DEFAULT_TENANT
    if resource_tenant == call.principal.tenant:
        return True
    if call.principal.is_admin:
        call.audit.cross(call.principal, resource_tenant, call.method, call.peer)
        return True
    call.audit.refuse(call.method, "TENANT_FORBIDDEN", call.principal, call.peer,
                      "another tenant's resource, answered as not found")
    return False


def bearer(authorization: str | None) -> str | None:
    """The token of an ``authorization`` value ``Bearer <token>`` (gRPC metadata or HTTP header), or None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authorize(verifier: TokenVerifier, audit: Audit, method: str, authorization: str | None,
              peer: str) -> CallContext:
    """The caller of a request for ``method`` (a full gRPC method name) if its token allows the call.

    The one check behind both faces (the gRPC interceptor and the HTTP middleware): a bearer token is
    present (else UNAUTHENTICATED ``TOKEN_MISSING``), verifies (``TOKEN_INVALID``/``TOKEN_EXPIRED``) and
    grants the method's role from the rights table (else PERMISSION_DENIED ``ROLE_REQUIRED`` with metadata
    ``required_role``). A refusal is audited, then raised.
    """
    principal: Principal | None = None
    try:
        token = bearer(authorization)
        if token is None:
            raise missing_token()
        principal = verifier.verify(token)
        needed = required_role(method)
        if not principal.grants(needed):
            raise ServiceError(grpc.StatusCode.PERMISSION_DENIED,
                               f"{method.rsplit('/', 1)[-1]} needs role {needed.label!r} or higher; the token has "
                               f"{', '.join(sorted(r.label for r in principal.roles))}", "ROLE_REQUIRED",
                               metadata={"required_role": needed.label})
    except (TokenError, ServiceError) as error:
        audit.refuse(method, error.reason, principal, peer, error.message)
        raise
    return CallContext(principal, method, audit, peer)
