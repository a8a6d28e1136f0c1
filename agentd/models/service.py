"""The gRPC ModelService over a :class:`~agentd.models.router.ModelRouter`.

Validates every request (INVALID_ARGUMENT naming each bad field), converts to
and from the provider-neutral types, and turns every :class:`ModelError` into a
status with an ErrorReason in one function, :func:`status_for`; the servicer
raises it and the daemon's error interceptor answers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agentd.models.router import CallFailed, CallOptions, ModelRouter, Receipt
from agentd.models.types import (
    ChatRequest,
    ChatResponse,
    ErrorKind,
    Message,
    ModelError,
    StreamEnd,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
)
from mabeam.errors import FieldViolation, ServiceError, invalid_argument
from mabeam.ids import ID_RE, ID_RULE
from mabeam.security.context import tenant_for
from mabeam.v1 import model_pb2, model_pb2_grpc

MAX_MESSAGES = 2000
MAX_TEXT_BYTES = 2 * 1024 * 1024
MAX_TOOLS = 128
MAX_STOP = 16
MAX_METADATA = 32
ROLES = frozenset({"system", "user", "assistant", "tool"})

#: ModelError kind -> (status code, ErrorReason name).
STATUS: dict[ErrorKind, tuple[grpc.StatusCode, str]] = {
    ErrorKind.INVALID: (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
    ErrorKind.REJECTED: (grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_REJECTED"),
    ErrorKind.AUTH: (grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_REJECTED"),
    ErrorKind.RATE_LIMITED: (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
    ErrorKind.BUDGET_EXHAUSTED: (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXHAUSTED"),
    ErrorKind.BULKHEAD_FULL: (grpc.StatusCode.RESOURCE_EXHAUSTED, "BULKHEAD_FULL"),
    ErrorKind.CIRCUIT_OPEN: (grpc.StatusCode.UNAVAILABLE, "CIRCUIT_OPEN"),
    ErrorKind.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    ErrorKind.MALFORMED: (grpc.StatusCode.UNAVAILABLE, "MALFORMED_RESPONSE"),
    ErrorKind.STREAM_CUT: (grpc.StatusCode.UNAVAILABLE, "STREAM_CUT"),
    ErrorKind.TIMEOUT: (grpc.StatusCode.DEADLINE_EXCEEDED, "PROVIDER_TIMEOUT"),
    ErrorKind.LEDGER_UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, "ETCD_UNAVAILABLE"),
    ErrorKind.QUOTA_EXCEEDED: (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED"),
}


def status_for(error: ModelError) -> ServiceError:
    """The one place a model failure becomes a gRPC status (code, reason, message, RetryInfo)."""
    code, reason = STATUS.get(error.kind, (grpc.StatusCode.UNKNOWN, ""))
    retry = error.retry_after_s
    if retry is None and error.kind in (ErrorKind.CIRCUIT_OPEN, ErrorKind.LEDGER_UNAVAILABLE):
        retry = 1.0
    return ServiceError(code, error.message, reason, retry_after_s=retry, metadata=error.metadata or None)


def _json_object(text: str, field: str, problems: list[FieldViolation]) -> dict[str, Any] | None:
    if not text:
        return None
    if len(text) > MAX_TEXT_BYTES:
        problems.append(FieldViolation(field, f"larger than {MAX_TEXT_BYTES} bytes"))
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(FieldViolation(field, f"not valid JSON ({error})"))
        return None
    if not isinstance(value, dict):
        problems.append(FieldViolation(field, "must be a JSON object"))
        return None
    return value


def to_request(request: model_pb2.CompleteRequest) -> tuple[ChatRequest, CallOptions]:
    """Validate and convert; ServiceError (INVALID_ARGUMENT) naming every bad field.

    The tenant (whose budget pays) is the token's: another only for an admin (TENANT_FORBIDDEN first).
    """
    tenant = tenant_for(request.tenant)
    problems: list[FieldViolation] = []
    if not request.model:
        problems.append(FieldViolation("model", "required"))
    if not request.messages:
        problems.append(FieldViolation("messages", "at least one message is required"))
    if len(request.messages) > MAX_MESSAGES:
        problems.append(FieldViolation("messages", f"at most {MAX_MESSAGES}"))
    size = 0
    messages = []
    for i, m in enumerate(request.messages[:MAX_MESSAGES]):
        if m.role not in ROLES:
            problems.append(FieldViolation(f"messages[{i}].role", f"must be one of {', '.join(sorted(ROLES))}"))
        if m.role == "tool" and not m.tool_call_id:
            problems.append(FieldViolation(f"messages[{i}].tool_call_id", "required for role tool"))
        size += len(m.content) + sum(len(c.arguments) for c in m.tool_calls)
        messages.append(Message(m.role, m.content, m.name, m.tool_call_id,
                                tuple(ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls)))
    if size > MAX_TEXT_BYTES:
        problems.append(FieldViolation("messages", f"larger than {MAX_TEXT_BYTES} bytes in total"))
    if len(request.tools) > MAX_TOOLS:
        problems.append(FieldViolation("tools", f"at most {MAX_TOOLS}"))
    tools = []
    for i, t in enumerate(request.tools[:MAX_TOOLS]):
        if not t.name or len(t.name) > 64:
            problems.append(FieldViolation(f"tools[{i}].name", "1-64 characters required"))
        tools.append(Tool(t.name, t.description, _json_object(t.parameters_json, f"tools[{i}].parameters_json",
                                                               problems) or {}))
    schema = _json_object(request.response_schema_json, "response_schema_json", problems)
    temperature = request.temperature if request.HasField("temperature") else None
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        problems.append(FieldViolation("temperature", "must be between 0 and 2"))
    if request.max_tokens < 0:
        problems.append(FieldViolation("max_tokens", "must be >= 0"))
    if len(request.stop) > MAX_STOP:
        problems.append(FieldViolation("stop", f"at most {MAX_STOP} sequences"))
    if len(request.metadata) > MAX_METADATA:
        problems.append(FieldViolation("metadata", f"at most {MAX_METADATA} entries"))
    if not ID_RE.match(tenant):
        problems.append(FieldViolation("tenant", ID_RULE))
    if len(request.run_id) > 128 or "/" in request.run_id:
        problems.append(FieldViolation("run_id", "at most 128 characters, no '/'"))
    if request.timeout_seconds < 0 or request.cache_ttl_seconds < 0:
        problems.append(FieldViolation("timeout_seconds" if request.timeout_seconds < 0 else "cache_ttl_seconds",
                                       "must be >= 0"))
    if problems:
        raise invalid_argument(problems)
    chat = ChatRequest(request.model, tuple(messages), tuple(tools), schema, request.json_mode, temperature,
                       request.max_tokens, tuple(request.stop), request.seed if request.HasField("seed") else None,
                       dict(request.metadata))
    options = CallOptions(tenant, request.run_id, request.cache, request.cache_ttl_seconds, request.cache_sampled,
                          request.timeout_seconds)
    return chat, options


def receipt_pb(receipt: Receipt) -> model_pb2.ModelReceipt:
    """A receipt as protobuf."""
    return model_pb2.ModelReceipt(
        call_id=receipt.call_id, tenant=receipt.tenant, run_id=receipt.run_id, route=receipt.route,
        provider=receipt.provider, model=receipt.model, path=list(receipt.path), attempts=receipt.attempts,
        cache_hit=receipt.cache_hit, request_hash=receipt.request_hash, prompt_hash=receipt.prompt_hash,
        output_hash=receipt.output_hash,
        usage=model_pb2.Usage(input_tokens=receipt.usage.input_tokens, output_tokens=receipt.usage.output_tokens),
        cost_nusd=receipt.cost_nusd, reserved_tokens=receipt.reserved.tokens,
        reserved_cost_nusd=receipt.reserved.cost_nusd, latency_seconds=receipt.latency_s,
        error_class=receipt.error_class, error_message=receipt.error_message, partial=receipt.partial)


def response_pb(response: ChatResponse, receipt: Receipt) -> model_pb2.CompleteResponse:
    """A response and its receipt as protobuf."""
    return model_pb2.CompleteResponse(
        content=response.content,
        tool_calls=[model_pb2.ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in response.tool_calls],
        finish_reason=response.finish_reason,
        usage=model_pb2.Usage(input_tokens=response.usage.input_tokens, output_tokens=response.usage.output_tokens),
        model=response.model, latency_seconds=response.latency_s, receipt=receipt_pb(receipt))


class ModelService(model_pb2_grpc.ModelServiceServicer):
    """ListModels, Complete, StreamComplete."""

    def __init__(self, router: ModelRouter) -> None:
        self.router = router

    async def ListModels(self, request: model_pb2.ListModelsRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext) -> model_pb2.ListModelsResponse:
        """Models with prices and breaker states, and routes."""
        config = self.router.config
        models = [model_pb2.ModelInfo(
            name=name, provider=entry.provider, provider_model=entry.name or name,
            provider_kind=config.providers[entry.provider].kind, input_per_1k_usd=entry.input_per_1k_usd,
            output_per_1k_usd=entry.output_per_1k_usd, max_output_tokens=entry.max_output_tokens,
            breaker_state=self.router.breaker_state(entry.provider).value)
            for name, entry in sorted(config.models.items())]
        routes = [model_pb2.RouteInfo(name=name, primary=route.primary, fallbacks=route.fallbacks)
                  for name, route in sorted(config.routes.items())]
        return model_pb2.ListModelsResponse(models=models, routes=routes)

    async def Complete(self, request: model_pb2.CompleteRequest,  # noqa: N802
                       context: grpc.aio.ServicerContext) -> model_pb2.CompleteResponse:
        """One completion."""
        chat, options = to_request(request)
        try:
            response, receipt = await self.router.complete(chat, options)
        except ModelError as error:
            raise status_for(error) from None
        return response_pb(response, receipt)

    async def StreamComplete(self, request: model_pb2.CompleteRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext) -> AsyncIterator[model_pb2.CompleteEvent]:
        """Deltas, then ``done`` (or ``failed`` with the partial message, then the error status)."""
        chat, options = to_request(request)
        end: ChatResponse | None = None
        try:
            async for event in self.router.stream(chat, options):
                if isinstance(event, TextDelta):
                    yield model_pb2.CompleteEvent(text=event.text)
                elif isinstance(event, ToolCallDelta):
                    yield model_pb2.CompleteEvent(tool_call=model_pb2.ToolCallDelta(
                        index=event.index, id=event.id, name=event.name, arguments=event.arguments))
                elif isinstance(event, StreamEnd):
                    end = event.response
                elif isinstance(event, Receipt) and end is not None:
                    yield model_pb2.CompleteEvent(done=response_pb(end, event))
        except CallFailed as error:
            if error.partial is not None:
                yield model_pb2.CompleteEvent(failed=response_pb(error.partial, error.receipt))
            raise status_for(error) from None
        except ModelError as error:
            raise status_for(error) from None
