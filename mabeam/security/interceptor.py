"""The one server interceptor that enforces identity and rights in meshd, agentd and the coordinator.

For every method of the ``mabeam.v1`` services :class:`AuthInterceptor`:

1. reads the bearer token from the ``authorization`` metadata (``Bearer <token>``) —
   none: UNAUTHENTICATED / ``TOKEN_MISSING``;
2. verifies it (:class:`~mabeam.security.tokens.TokenVerifier`: signature by ``kid``,
   audience, expiry) — UNAUTHENTICATED / ``TOKEN_INVALID`` or ``TOKEN_EXPIRED``;
3. checks the method's role in :data:`~mabeam.security.rights.RIGHTS` — PERMISSION_DENIED /
   ``ROLE_REQUIRED`` (metadata ``required_role``);
4. runs the servicer with the caller as the current
   :class:`~mabeam.security.context.CallContext`, so servicers apply the tenant rules
   (:func:`~mabeam.security.context.tenant_for`, :func:`~mabeam.security.context.visible`).

Refusals are raised as :class:`~mabeam.errors.ServiceError`: the daemon installs this
interceptor *inside* :class:`mabeam.grpcutil.ErrorInterceptor`, which builds every status::

    grpc.aio.server(interceptors=[ErrorInterceptor(registry), AuthInterceptor(verifier, audit)])

Every refusal for a security reason — the ones above, and a servicer's
``TENANT_FORBIDDEN`` or ``QUOTA_EXCEEDED`` — is audited (:class:`~mabeam.security.audit.Audit`).
Health and reflection are not ``mabeam.v1`` services and stay open (probes; the schema is public).
With no verifier (security not configured) the interceptor returns every handler unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import grpc

from mabeam.errors import ServiceError
from mabeam.grpcutil import MethodInterceptor
from mabeam.security import context
from mabeam.security.audit import AUDITED_REASONS, Audit
from mabeam.security.tokens import TokenVerifier


def authorization_of(metadata: Any) -> str | None:
    """The ``authorization`` entry of gRPC invocation metadata, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def peer_of(context_: grpc.aio.ServicerContext) -> str:
    """The peer's address, with its certificate's common name under mTLS (for audit lines)."""
    peer = str(context_.peer() or "")
    try:
        auth = context_.auth_context() or {}
    except Exception:  # noqa: BLE001 - a context without auth data: the address is enough
        auth = {}
    names = auth.get("x509_common_name") or []
    if names:
        name = names[0].decode() if isinstance(names[0], bytes) else str(names[0])
        return f"{peer} cn={name}"
    return peer


class AuthInterceptor(MethodInterceptor):
    """Authenticates and authorises every ``mabeam.v1`` call (see the module docstring)."""

    def __init__(self, verifier: TokenVerifier | None, audit: Audit) -> None:
        super().__init__()
        self.verifier = verifier
        self.audit = audit

    @property
    def enabled(self) -> bool:
        """False when the daemon runs without security (every handler passes through)."""
        return self.verifier is not None

    @property
    def active(self) -> bool:
        """Handlers are wrapped only when security is configured."""
        return self.enabled

    def authenticate(self, method: str, context_: grpc.aio.ServicerContext) -> context.CallContext:
        """The caller of this request if it may call ``method``; raises (and audits) the refusal otherwise."""
        assert self.verifier is not None
        return context.authorize(self.verifier, self.audit, method, authorization_of(context_.invocation_metadata()),
                                 peer_of(context_))

    def _audited(self, call: context.CallContext, error: ServiceError) -> None:
        if error.reason in AUDITED_REASONS:
            self.audit.refuse(call.method, error.reason, call.principal, call.peer, error.message)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        async def unary(request: Any, context_: grpc.aio.ServicerContext) -> Any:
            call = self.authenticate(method, context_)
            token = context.enter(call)
            try:
                behaviour = handler.unary_unary if handler.unary_unary is not None else handler.stream_unary
                return await behaviour(request, context_)
            except ServiceError as error:
                self._audited(call, error)
                raise
            finally:
                context.leave(token)

        async def streaming(request: Any, context_: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = self.authenticate(method, context_)
            # Set for the rest of this RPC's task (each RPC runs in its own task); a reset inside an async
            # generator could run in another context when the generator is closed from outside.
            context.enter(call)
            behaviour = handler.unary_stream if handler.unary_stream is not None else handler.stream_stream
            try:
                result = behaviour(request, context_)
                if inspect.isawaitable(result):  # a handler that writes with context.write
                    await result
                    return
                async for item in result:
                    yield item
            except ServiceError as error:
                self._audited(call, error)
                raise

        deserializer, serializer = handler.request_deserializer, handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(streaming, deserializer, serializer)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(unary, deserializer, serializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(streaming, deserializer, serializer)
        return grpc.unary_unary_rpc_method_handler(unary, deserializer, serializer)
