"""A thin synchronous face over any async client of this SDK.

The async client is the one core; :class:`SyncFace` runs it on a private event
loop in a daemon thread and turns each coroutine method into a blocking call
and each async iterator into a plain iterator.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any


class SyncFace:
    """Blocking access to an async client built by `factory` (called on the private loop)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mabeam-sync", daemon=True)
        self._thread.start()
        self._client = self._run(self._make(factory))

    @staticmethod
    async def _make(factory: Callable[[], Any]) -> Any:
        return factory()

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *a, **kw: self._run(attr(*a, **kw))
        if inspect.isasyncgenfunction(attr):
            return lambda *a, **kw: self._iterate(attr(*a, **kw))
        return attr

    def _iterate(self, agen: AsyncIterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close the client and stop the private loop."""
        close = getattr(self._client, "close", None)
        if close is not None:
            self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> SyncFace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
