"""Security shared by every daemon and tool: who is calling, what they may do, and on which tenant.

- :mod:`~mabeam.security.tokens` — bearer tokens: Ed25519-signed JWTs naming a tenant and roles, with
  expiry and a key id (``kid``) so several keys are valid at once during a rotation; issue and verify.
- :mod:`~mabeam.security.keys` — the token keys: key pairs in files, public keys from a directory
  and/or etcd (:class:`~mabeam.security.keys.KeyRing`).
- :mod:`~mabeam.security.rights` — the one table of which role each gRPC method needs.
- :mod:`~mabeam.security.interceptor` — :class:`~mabeam.security.interceptor.AuthInterceptor`, the one
  server interceptor that enforces all of it in meshd, agentd and the coordinator (installed inside
  :class:`mabeam.grpcutil.ErrorInterceptor`, which turns its refusals into statuses).
- :mod:`~mabeam.security.context` — the caller of the request being served (a context variable the
  interceptor sets) and the tenant rules every servicer applies: :func:`~mabeam.security.context.tenant_for`
  for a request's tenant field, :func:`~mabeam.security.context.visible` for a resource found by id.
- :mod:`~mabeam.security.audit` — refused requests and cross-tenant admin actions, logged and counted.
- :mod:`~mabeam.security.config` — the ``[security]`` table of every daemon's config, and the rule that a
  daemon serves a non-loopback address only with tokens and mTLS (:func:`~mabeam.security.config.bind_grpc`).
- :mod:`~mabeam.security.certs` — a CA and node certificates for mTLS (``mabeam certs``).

With no ``[security]`` configured nothing here is active: no principal is set, every tenant rule passes
the request's own tenant through (the dev cluster on loopback works as before). docs/security.md has the
threat model, the token format, key rotation and the quota semantics.
"""
