"""What every adapter shares: the httpx client, the one place HTTP failures become ModelErrors, SSE reading.

An adapter turns a :class:`~agentd.models.types.ChatRequest` into one HTTP
request and the answer back into a response or a stream of events. It makes one
attempt; retries, breakers and budgets are the router's.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from agentd.models.config import ProviderConfig
from agentd.models.retry import parse_retry_after
from agentd.models.sse import SSEDecoder, SSEEvent
from agentd.models.types import ChatRequest, ChatResponse, ErrorKind, ModelError, StreamEvent

#: Largest non-streamed answer body read (bigger is MALFORMED, never an unbounded read).
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


def kind_for_status(status: int) -> ErrorKind:
    """The error kind of an HTTP status from a provider."""
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (401, 403):
        return ErrorKind.AUTH
    if status in (408, 409) or status >= 500:
        return ErrorKind.UNAVAILABLE  # 408/409: the provider asks to try again; 5xx (and Anthropic's 529)
    return ErrorKind.REJECTED


def provider_message(body: bytes) -> str:
    """The provider's error message from an OpenAI- or Anthropic-style error body (or the raw text)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body[:500].decode("utf-8", errors="replace")
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:2000]
        if isinstance(error, str):
            return error[:2000]
    return body[:500].decode("utf-8", errors="replace")


class Adapter:
    """Base of the provider adapters: owns the httpx.AsyncClient of one provider endpoint."""

    def __init__(self, name: str, config: ProviderConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.config = config
        key = config.api_key()
        self._headers = {**self.auth_headers(key.get_secret_value() if key else ""), **config.headers}
        limits = httpx.Limits(max_connections=config.max_connections,
                              max_keepalive_connections=config.max_connections)
        timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
        self.client = httpx.AsyncClient(base_url=config.base_url, limits=limits, timeout=timeout,
                                        headers=self._headers, transport=transport)

    def auth_headers(self, key: str) -> dict[str, str]:
        """Headers carrying the API key (adapters override)."""
        return {}

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    @contextmanager
    def translated(self, model: str) -> Iterator[None]:
        """The one place httpx exceptions become ModelErrors (connect, timeout, protocol, read)."""
        try:
            yield
        except httpx.TimeoutException as error:
            raise ModelError(ErrorKind.TIMEOUT, f"{self.name}: timed out ({type(error).__name__})",
                             provider=self.name, model=model) from None
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise ModelError(ErrorKind.UNAVAILABLE, f"{self.name}: cannot connect: {error}",
                             provider=self.name, model=model) from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
            raise ModelError(ErrorKind.STREAM_CUT, f"{self.name}: connection dropped: {error}",
                             provider=self.name, model=model) from None
        except httpx.HTTPError as error:
            raise ModelError(ErrorKind.UNAVAILABLE, f"{self.name}: {type(error).__name__}: {error}",
                             provider=self.name, model=model) from None

    def error_for(self, response: httpx.Response, body: bytes, model: str) -> ModelError:
        """The ModelError of a non-2xx answer, with the provider's message and Retry-After."""
        retry_after = parse_retry_after(response.headers.get("retry-after"), time.time(),
                                        response.headers.get("retry-after-ms"))
        kind = kind_for_status(response.status_code)
        return ModelError(kind, f"{self.name} answered {response.status_code}: {provider_message(body)}",
                          status=response.status_code, retry_after_s=retry_after, provider=self.name, model=model)

    async def post_json(self, path: str, body: dict[str, Any], model: str) -> Any:
        """POST a JSON body and return the parsed JSON answer (ModelError otherwise)."""
        with self.translated(model):
            async with self.client.stream("POST", path, json=body) as response:
                raw = b""
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) > MAX_RESPONSE_BYTES:
                        raise ModelError(ErrorKind.MALFORMED, f"{self.name}: answer larger than "
                                         f"{MAX_RESPONSE_BYTES} bytes", provider=self.name, model=model)
        if response.status_code >= 300:
            raise self.error_for(response, raw, model)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ModelError(ErrorKind.MALFORMED, f"{self.name}: answer is not JSON: {error}",
                             provider=self.name, model=model) from None

    async def post_sse(self, path: str, body: dict[str, Any], model: str) -> AsyncIterator[SSEEvent]:
        """POST and yield the server-sent events of the answer (ModelError on a non-2xx or a cut)."""
        with self.translated(model):
            async with self.client.stream("POST", path, json=body) as response:
                if response.status_code >= 300:
                    raw = await response.aread()
                    raise self.error_for(response, raw[:MAX_RESPONSE_BYTES], model)
                decoder = SSEDecoder()
                async for chunk in response.aiter_bytes():
                    try:
                        events = decoder.feed(chunk)
                    except ValueError as error:
                        raise ModelError(ErrorKind.MALFORMED, f"{self.name}: {error}", provider=self.name,
                                         model=model) from None
                    for event in events:
                        yield event

    def malformed(self, what: str, model: str) -> ModelError:
        """A MALFORMED error naming what did not parse."""
        return ModelError(ErrorKind.MALFORMED, f"{self.name}: malformed answer: {what}", provider=self.name,
                          model=model)

    async def complete(self, request: ChatRequest, model_id: str, max_tokens: int) -> ChatResponse:
        """One non-streamed attempt."""
        raise NotImplementedError

    def stream(self, request: ChatRequest, model_id: str, max_tokens: int) -> AsyncIterator[StreamEvent]:
        """One streamed attempt: deltas, then a StreamEnd with the assembled response and usage."""
        raise NotImplementedError
