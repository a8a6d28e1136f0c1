"""Identity and rights on an HTTP face (the runs REST/SSE API): the gRPC interceptor's rules, as ASGI middleware.

:class:`AuthMiddleware` wraps a Starlette (any ASGI) app. Each HTTP request names the
RPC it stands for (``route(method, path)`` gives the full gRPC method name, so the one
rights table, :data:`mabeam.security.rights.RIGHTS`, decides), carries the same bearer
token (``Authorization: Bearer <token>``), and is refused the same way:

- 401 ``{"error": {"code": "UNAUTHENTICATED", "reason": "TOKEN_MISSING"|"TOKEN_INVALID"|"TOKEN_EXPIRED", ...}}``
  with ``WWW-Authenticate: Bearer``;
- 403 ``{"error": {"code": "PERMISSION_DENIED", "reason": "ROLE_REQUIRED", "metadata": {"required_role": ...}}}``.

An accepted request runs with the caller as the current
:class:`~mabeam.security.context.CallContext`, so the handlers apply the same tenant
rules as the gRPC servicers. It is plain ASGI (not Starlette's ``BaseHTTPMiddleware``):
the app runs in the same task, so the context variable reaches the handlers and a
Server-Sent Events stream is not buffered.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import grpc

from mabeam.errors import ServiceError
from mabeam.security import context
from mabeam.security.audit import Audit
from mabeam.security.tokens import TokenVerifier

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: HTTP status for the gRPC codes an HTTP face answers (the rest are 500).
HTTP_STATUS = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
               grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
               grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.FAILED_PRECONDITION: 409,
               grpc.StatusCode.ABORTED: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
               grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504}


def error_body(error: ServiceError) -> dict[str, Any]:
    """The JSON error of an HTTP face for a ServiceError (the runs API's error shape)."""
    body: dict[str, Any] = {"code": error.code.name, "reason": error.reason, "message": error.message}
    if error.metadata:
        body["metadata"] = dict(error.metadata)
    return {"error": body}


def http_status(error: ServiceError) -> int:
    """The HTTP status for a ServiceError's gRPC code."""
    return HTTP_STATUS.get(error.code, 500)


class AuthMiddleware:
    """Authenticates and authorises every HTTP request of an ASGI app (see the module docstring).

    ``route(method, path)`` names the gRPC method a request stands for (None: not a route of the API,
    which passes through to the app's own 404/405).
    """

    def __init__(self, app: ASGIApp, verifier: TokenVerifier, audit: Audit,
                 route: Callable[[str, str], str | None]) -> None:
        self.app = app
        self.verifier = verifier
        self.audit = audit
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = self.route(scope["method"], scope["path"])
        if method is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("", 0)
        peer = f"http:{client[0]}:{client[1]}"
        try:
            call = context.authorize(self.verifier, self.audit, method, _authorization(scope), peer)
        except ServiceError as error:  # refused and audited
            await _answer(send, error)
            return
        token_ = context.enter(call)
        try:
            await self.app(scope, receive, send)
        finally:
            context.leave(token_)


def _authorization(scope: Scope) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == b"authorization":
            return str(value.decode("latin-1"))
    return None


async def _answer(send: Send, error: ServiceError) -> None:
    body = json.dumps(error_body(error)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        headers.append((b"www-authenticate", b'Bearer realm="mabeam"'))
    await send({"type": "http.response.start", "status": http_status(error), "headers": headers})
    await send({"type": "http.response.body", "body": body})
