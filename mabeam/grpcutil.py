"""The server side of the error contract: one interceptor every daemon's gRPC server installs.

:class:`ErrorInterceptor` wraps every method of the ``mabeam.v1`` services and
is the one place a daemon's errors become gRPC statuses:

- the request's bytes are parsed here, so bytes that are not a valid request
  message (wrong wire types, invalid UTF-8 in a string, truncation) answer
  INVALID_ARGUMENT / ``MALFORMED_REQUEST`` instead of gRPC's bare INTERNAL;
- a raised :class:`~mabeam.errors.ServiceError` (and so every
  ``DataPlaneError`` and ``AgentError``) becomes its status with ErrorInfo,
  BadRequest and RetryInfo details;
- an :class:`~mabeam.etcd.client.EtcdError` that escapes (etcd failed under a
  request that needs it) becomes UNAVAILABLE / ``ETCD_UNAVAILABLE`` with
  RetryInfo;
- ``NotImplementedError`` (a contract method the servicer does not override)
  becomes UNIMPLEMENTED / ``NOT_IMPLEMENTED``;
- anything else becomes INTERNAL / ``INTERNAL_ERROR`` with a generic message,
  and its traceback goes to the daemon's log (never to the client);
- each of these counts in ``mabeam_rejected_requests_total{method,reason}``.

A servicer method therefore validates and raises; it never builds a status::

    server = grpc.aio.server(interceptors=[ErrorInterceptor(registry)])
"""

from __future__ import annotations

import collections
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from mabeam.errors import ServiceError
from mabeam.etcd.client import EtcdError

log = logging.getLogger("mabeam.grpc")

#: Services under this prefix are wrapped; health and reflection keep their own behaviour.
SERVICE_PREFIX = "/mabeam.v1."


def _leaf(error: BaseException) -> BaseException:
    """The first ServiceError inside an exception group (a TaskGroup in a servicer), else the group."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _leaf(inner)
            if isinstance(found, ServiceError):
                return found
    return error


def rejected_family(interceptors: Iterable[ErrorInterceptor]) -> CounterMetricFamily:
    """``mabeam_rejected_requests_total{method,reason}`` summed over interceptors (for a shared collector)."""
    total: collections.Counter[tuple[str, str]] = collections.Counter()
    for interceptor in interceptors:
        total.update(interceptor.rejected)
    family = CounterMetricFamily("mabeam_rejected_requests",
                                 "Requests answered with an error status, by method and ErrorReason",
                                 labels=["method", "reason"])
    for (method, reason), count in sorted(total.items()):
        family.add_metric([method, reason], count)
    return family


class _RejectedCollector:
    def __init__(self, interceptor: ErrorInterceptor) -> None:
        self.interceptor = interceptor

    def collect(self) -> Iterator[Metric]:
        yield rejected_family([self.interceptor])


class MethodInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type stubs
    """A server interceptor that wraps each ``mabeam.v1`` method's handler once and reuses it.

    Subclasses implement :meth:`_wrap` (``method`` is the full name, ``/mabeam.v1.Service/Method``) and may
    override :attr:`active` to pass every handler through unchanged.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    @property
    def active(self) -> bool:
        """False: handlers pass through unwrapped."""
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The wrapped handler of a ``mabeam.v1`` method (built once per method), else the original."""
        method: str = handler_call_details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or not self.active or not method.startswith(SERVICE_PREFIX):
            return handler
        wrapped = self._wrap(method, handler)
        self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError


class ErrorInterceptor(MethodInterceptor):
    """Parses requests, turns raised errors into rich statuses and counts them (see the module docstring).

    ``rejected`` counts answers by (method, reason). With a ``registry`` the interceptor exports them there;
    a daemon whose collector aggregates several instances (agentd) uses :func:`rejected_family` instead.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__()
        self.rejected: collections.Counter[tuple[str, str]] = collections.Counter()
        if registry is not None:
            registry.register(_RejectedCollector(self))

    # -- translating ----------------------------------------------------------------------

    def error_for(self, method: str, error: BaseException) -> ServiceError:
        """The ServiceError to answer for anything a handler raised (logging the unexpected)."""
        error = _leaf(error)
        if isinstance(error, ServiceError):
            return error
        if isinstance(error, EtcdError):  # etcd failed under a request that needs it: retry shortly
            return ServiceError(grpc.StatusCode.UNAVAILABLE, f"etcd is unavailable, retry shortly: {error}",
                                "ETCD_UNAVAILABLE", retry_after_s=0.5)
        if isinstance(error, NotImplementedError):
            return ServiceError(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this server",
                                "NOT_IMPLEMENTED")
        log.error("unexpected error in %s", method, exc_info=error)
        return ServiceError(grpc.StatusCode.INTERNAL,
                            f"internal error in {method}; the server logged the cause", "INTERNAL_ERROR")

    async def _abort(self, method: str, context: grpc.aio.ServicerContext, error: BaseException) -> None:
        answer = self.error_for(method, error)
        self.rejected[(method, answer.reason or answer.code.name)] += 1
        await context.abort_with_status(answer.to_status())

    @staticmethod
    def _parser(method: str, deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        def parse(raw: bytes) -> Any:
            if deserializer is None:
                return raw
            try:
                return deserializer(raw)
            except Exception as error:  # DecodeError and friends: the bytes are not this message
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"the request is not a valid {method} request message: {error}",
                                   "MALFORMED_REQUEST") from None
        return parse

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = method.lstrip("/")  # counted and reported as Service/Method
        parse = self._parser(method, handler.request_deserializer)

        async def requests(raw: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            async for item in raw:
                yield parse(item)

        async def answer(start: Callable[[], Awaitable[Any]], context: grpc.aio.ServicerContext) -> Any:
            try:
                return await start()
            except grpc.aio.AbortError:  # the servicer ended the call itself
                raise
            except Exception as error:
                await self._abort(method, context, error)

        async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await answer(lambda: handler.unary_unary(parse(raw), context), context)

        async def stream_unary(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            return await answer(lambda: handler.stream_unary(requests(raw), context), context)

        async def respond(start: Callable[[], Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                result = start()
                if inspect.isawaitable(result):  # a handler that writes with context.write
                    await result
                    return
                async for item in result:
                    yield item
            except grpc.aio.AbortError:  # the servicer ended the call itself
                raise
            except Exception as error:
                await self._abort(method, context, error)

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in respond(lambda: handler.unary_stream(parse(raw), context), context):
                yield item

        async def stream_stream(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in respond(lambda: handler.stream_stream(requests(raw), context), context):
                yield item

        serializer = handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(stream_stream, None, serializer)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(stream_unary, None, serializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(unary_stream, None, serializer)
        return grpc.unary_unary_rpc_method_handler(unary_unary, None, serializer)
