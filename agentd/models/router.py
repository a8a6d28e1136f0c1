"""The model router: one call through cache, budgets, rate limits, breakers, bulkheads, retries and fallbacks.

The I/O shell around the pure cores. For one call (:meth:`ModelRouter.complete`
or :meth:`ModelRouter.stream`):

1. resolve the name to candidates (a route's primary and fallbacks, or one model);
2. answer from the cache when the call opted in and the request is cacheable;
3. check the tenant's rate limits (refused with a retry delay, never queued);
4. reserve the worst case (the most expensive candidate's) in the tenant's and
   the run's budgets — refused with BUDGET_EXHAUSTED before any request leaves;
5. for each candidate in order: skip it while its provider's breaker is open;
   wait for the provider's rate limit (or skip it when the wait is too long);
   take a bulkhead slot (queue, or skip when the queue is full); attempt; on a
   retryable failure back off (full jitter, Retry-After as a floor) and attempt
   again until the attempts or the deadline are spent, then fall back to the
   next candidate. A 400-class rejection ends the call at once. A stream that
   already emitted something is never retried (the caller has seen the tokens):
   the call fails with the partial message;
6. settle the budgets with the actual usage (nothing for a call that got no
   answer; the prompt bound plus what streamed for a cut stream) and give the
   caller and the sink a :class:`Receipt`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import httpx

from agentd.models.adapters import Adapter, make_adapter
from agentd.models.breaker import BreakerConfig, BreakerState, CircuitBreaker
from agentd.models.budget import NANO_PER_USD, Amount, Price, prompt_token_bound, worst_case
from agentd.models.cache import CacheConfig, ResponseCache, cacheable, output_hash, prompt_hash, request_hash
from agentd.models.config import Limits, ModelEntry, ModelsConfig
from agentd.models.ledger import Ledger, MemoryLedger, Scope
from agentd.models.limits import Admission, BulkheadConfig, BulkheadTable, TokenBucket
from agentd.models.retry import RetryConfig, next_delay
from agentd.models.types import (
    BREAKER_FAILURES,
    ChatRequest,
    ChatResponse,
    ErrorKind,
    ModelError,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from mabeam.etcd.client import EtcdError

log = logging.getLogger("agentd.models")
Delta = TextDelta | ToolCallDelta


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Per-call options: whose budget, the cache opt-in, and a tighter total deadline."""

    tenant: str = "default"
    run_id: str = ""
    cache: bool = False
    cache_ttl_s: float = 0.0
    cache_sampled: bool = False
    timeout_s: float = 0.0
    call_id: str = ""


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a call did, for the run log and audits (hashes are hex SHA-256)."""

    call_id: str
    tenant: str
    run_id: str
    route: str
    provider: str
    model: str
    path: tuple[str, ...]  # each candidate's outcome, e.g. ("small:unavailable", "large:ok")
    attempts: int
    cache_hit: bool
    request_hash: str
    prompt_hash: str
    output_hash: str
    usage: Usage
    cost_nusd: int
    reserved: Amount
    latency_s: float
    error_class: str = ""
    error_message: str = ""
    partial: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (for run events)."""
        data = asdict(self)
        data["path"] = list(self.path)
        data["cost_usd"] = self.cost_nusd / NANO_PER_USD
        return data


class CallFailed(ModelError):
    """The call failed after everything was tried; carries its receipt and any partial answer."""

    def __init__(self, error: ModelError, receipt: Receipt, partial: ChatResponse | None = None) -> None:
        super().__init__(error.kind, error.message, status=error.status, retry_after_s=error.retry_after_s,
                         provider=error.provider, model=error.model, local=error.local, metadata=error.metadata)
        self.receipt = receipt
        self.partial = partial


class ModelSink(Protocol):
    """Where a call's deltas and receipt go as they happen (a run's event log; see docs/models.md)."""

    async def on_delta(self, call_id: str, delta: TextDelta | ToolCallDelta) -> None:
        """A piece of the answer, in order."""

    async def on_receipt(self, call_id: str, receipt: Receipt) -> None:
        """The call ended (answered or failed)."""


@dataclass
class ProviderRuntime:
    """A provider's live state: adapter, breaker, bulkhead, rate limits, counters."""

    name: str
    adapter: Adapter
    breaker: CircuitBreaker
    bulkhead: BulkheadTable
    requests: TokenBucket | None
    tokens: TokenBucket | None
    waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    attempts: Counter[str] = field(default_factory=Counter)


@dataclass
class _Progress:
    attempts: int = 0
    path: list[str] = field(default_factory=list)
    emitted_bytes: int = 0
    text: list[str] = field(default_factory=list)
    model: str = ""


def _limits(limits: Limits) -> tuple[int | None, int | None]:
    return (limits.tokens or None,
            round(limits.cost_usd * NANO_PER_USD) if limits.cost_usd else None)


def _tighter(configured: int | None, quota: int) -> int | None:
    """The tighter of a configured limit (None: unlimited) and a quota (0: unlimited)."""
    if not quota:
        return configured
    return quota if configured is None else min(configured, quota)


def _shown_id(scope: Scope) -> str:
    """A budget's id as the caller knows it (a run's scope id is ``<tenant>:<run id>``, see ``scopes``)."""
    return scope.id.partition(":")[2] if scope.kind == "run" else scope.id


class ModelRouter:
    """Every configured provider, model and route of one agentd, with their resilience state."""

    def __init__(self, config: ModelsConfig, ledger: Ledger | None = None,
                 clock: Callable[[], float] = time.monotonic, unit: Callable[[], float] = random.random,
                 transports: Mapping[str, httpx.AsyncBaseTransport] | None = None) -> None:
        self.config = config
        self.ledger = ledger or MemoryLedger()
        self.clock = clock
        self.unit = unit
        now = clock()
        self.providers: dict[str, ProviderRuntime] = {}
        for name, provider in config.providers.items():
            adapter = make_adapter(name, provider, (transports or {}).get(name))
            self.providers[name] = ProviderRuntime(
                name, adapter,
                CircuitBreaker(BreakerConfig(provider.breaker_failures, provider.breaker_window_s,
                                             provider.breaker_open_s)),
                BulkheadTable(BulkheadConfig(provider.max_concurrent, provider.max_queued)),
                TokenBucket.per_minute(provider.requests_per_minute, now) if provider.requests_per_minute else None,
                TokenBucket.per_minute(provider.tokens_per_minute, now) if provider.tokens_per_minute else None)
        self.prices = {name: Price.from_usd(m.input_per_1k_usd, m.output_per_1k_usd)
                       for name, m in config.models.items()}
        r = config.retry
        self.retry = RetryConfig(r.max_attempts, r.base_s, r.cap_s, r.max_retry_after_s, r.attempt_timeout_s,
                                 r.total_timeout_s)
        self.cache = ResponseCache(CacheConfig(config.cache.max_entries, config.cache.ttl_s))
        self._tenant_requests: dict[str, TokenBucket] = {}
        self._tenant_tokens: dict[str, TokenBucket] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)
        self.calls: Counter[tuple[str, str]] = Counter()  # (model or route, outcome)
        self.usage_tokens: Counter[tuple[str, str]] = Counter()  # (model, input|output)
        self.cost_nusd: Counter[str] = Counter()
        self.latency: list[float] = []
        #: The tenant's model quota, (model_max_tokens, model_max_cost_nusd) with 0 unlimited, as etcd holds
        #: it (set by agentd when it runs with etcd; None: only the configured budgets apply).
        self.tenant_quota: Callable[[str], Awaitable[tuple[int, int]]] | None = None

    async def close(self) -> None:
        """Close every provider's connections and the ledger."""
        for provider in self.providers.values():
            await provider.adapter.close()
        await self.ledger.close()

    # --- lookups ---

    def candidates(self, name: str) -> tuple[str, list[str]]:
        """(route name, model names to try in order) for a route or model name; INVALID when unknown."""
        route = self.config.routes.get(name)
        if route is not None:
            return name, [route.primary, *route.fallbacks]
        if name in self.config.models:
            return "", [name]
        known = sorted({*self.config.routes, *self.config.models})
        raise ModelError(ErrorKind.INVALID, f"model: no model or route named {name!r} (known: {', '.join(known)})")

    def breaker_state(self, provider: str) -> BreakerState:
        """A provider's breaker state, as of now (an elapsed open period reads as half-open)."""
        breaker = self.providers[provider].breaker
        if breaker.state == BreakerState.OPEN and breaker.retry_after(self.clock()) == 0.0:
            return BreakerState.HALF_OPEN
        return breaker.state

    def scopes(self, options: CallOptions, quota: tuple[int, int] = (0, 0)) -> list[Scope]:
        """The budgets a call counts against: its tenant's, and its run's when it names one.

        The tenant's budget is the tighter of ``[models.budgets]`` and the tenant's quota (``quota``:
        model_max_tokens, model_max_cost_nusd; 0 unlimited) — one budget, one ledger entry, whichever sets it.
        """
        budgets = self.config.budgets
        tokens, cost = _limits(budgets.tenants.get(options.tenant, budgets.default_tenant))
        tokens, cost = _tighter(tokens, quota[0]), _tighter(cost, quota[1])
        scopes = [Scope("tenant", options.tenant, tokens, cost)]
        if options.run_id:
            tokens, cost = _limits(budgets.per_run)
            # Keyed by tenant too: a tenant naming another tenant's run id spends its own run budget, never
            # the other's (tenants are ids without ':'; run ids may contain it, so the key is unambiguous).
            scopes.append(Scope("run", f"{options.tenant}:{options.run_id}", tokens, cost))
        return scopes

    def max_tokens(self, request: ChatRequest, entry: ModelEntry) -> int:
        """The output limit sent: the request's, else the model's default, never above the model's default."""
        return min(request.max_tokens, entry.max_output_tokens) if request.max_tokens else entry.max_output_tokens

    # --- the call ---

    async def complete(self, request: ChatRequest, options: CallOptions = CallOptions(),
                       sink: ModelSink | None = None) -> tuple[ChatResponse, Receipt]:
        """One non-streamed call; CallFailed (a ModelError with the receipt) when it fails."""
        return await self._execute(request, options, None, sink, streaming=False)

    async def stream(self, request: ChatRequest, options: CallOptions = CallOptions(),
                     sink: ModelSink | None = None) -> AsyncIterator[StreamEvent | Receipt]:
        """A streamed call: deltas as they arrive, then a StreamEnd and the Receipt; CallFailed at the end on failure."""
        queue: asyncio.Queue[Delta | None] = asyncio.Queue()

        async def emit(delta: Delta) -> None:
            queue.put_nowait(delta)

        async def run() -> tuple[ChatResponse, Receipt]:
            try:
                return await self._execute(request, options, emit, sink, streaming=True)
            finally:
                queue.put_nowait(None)

        task = asyncio.ensure_future(run())
        try:
            while (item := await queue.get()) is not None:
                yield item
            response, receipt = await task
            yield StreamEnd(response)
            yield receipt
        finally:
            if not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, ModelError):
                    pass

    async def _execute(self, request: ChatRequest, options: CallOptions, emit: Callable[[Delta], Awaitable[None]] | None,
                       sink: ModelSink | None, streaming: bool) -> tuple[ChatResponse, Receipt]:
        started = self.clock()
        call_id = options.call_id or uuid.uuid4().hex
        options = CallOptions(options.tenant, options.run_id, options.cache, options.cache_ttl_s,
                              options.cache_sampled, options.timeout_s, call_id)
        if not request.messages:
            raise ModelError(ErrorKind.INVALID, "messages: at least one message is required")
        route, names = self.candidates(request.model)
        outer_emit = emit
        if sink is not None:
            async def emit(delta: Delta) -> None:
                await sink.on_delta(call_id, delta)
                if outer_emit is not None:
                    await outer_emit(delta)

        entries = [(name, self.config.models[name]) for name in names]
        req_hash, p_hash = request_hash(request), prompt_hash(request)
        progress = _Progress()

        def receipt(response: ChatResponse | None, model: str, reserved: Amount, actual: Amount,
                    error: ModelError | None = None, cache_hit: bool = False) -> Receipt:
            entry = self.config.models.get(model)
            return Receipt(call_id, options.tenant, options.run_id, route or request.model,
                           entry.provider if entry else "", model, tuple(progress.path), progress.attempts, cache_hit,
                           req_hash, p_hash, output_hash(response) if response else "",
                           response.usage if response else Usage(), actual.cost_nusd, reserved,
                           self.clock() - started, error.kind.value if error else "",
                           error.message if error else "", bool(error and progress.emitted_bytes))

        async def finish(rec: Receipt) -> Receipt:
            self.calls[(route or request.model, rec.error_class or "ok")] += 1
            if not rec.error_class:
                self.latency.append(rec.latency_s)
                if len(self.latency) > 10_000:
                    del self.latency[:5_000]
            if sink is not None:
                await sink.on_receipt(call_id, rec)
            return rec

        # The cache: a hit costs nothing and sends nothing.
        use_cache = options.cache and cacheable(request, options.cache_sampled)
        if use_cache:
            hit = self.cache.get(req_hash, self.clock())
            if hit is not None:
                if emit is not None:
                    if hit.content:
                        await emit(TextDelta(hit.content))
                    for index, call in enumerate(hit.tool_calls):
                        await emit(ToolCallDelta(index, call.id, call.name, call.arguments))
                progress.path.append(f"{hit.model}:cache")
                return hit, await finish(receipt(hit, names[0], Amount(), Amount(), cache_hit=True))

        # Tenant rate limits refuse at once, with the wait as RetryInfo.
        worst = Amount()
        for name, entry in entries:
            amount = worst_case(request, self.max_tokens(request, entry), self.prices[name])
            worst = Amount(max(worst.tokens, amount.tokens), max(worst.cost_nusd, amount.cost_nusd))
        try:
            quota = await self.tenant_quota(options.tenant) if self.tenant_quota is not None else (0, 0)
            scopes = self.scopes(options, quota)
            self._tenant_limit(options.tenant, worst.tokens)
            reserved = await self.ledger.reserve(scopes, worst)
            if not reserved and quota != (0, 0):
                await self._over_quota(options.tenant, scopes[0], quota, worst)
        except ModelError as error:
            raise CallFailed(error, await finish(receipt(None, names[0], Amount(), Amount(), error))) from None
        except EtcdError as error:
            failure = ModelError(ErrorKind.LEDGER_UNAVAILABLE, f"the budget store is unavailable ({error}); "
                                 "nothing was sent", retry_after_s=1.0)
            raise CallFailed(failure, await finish(receipt(None, names[0], Amount(), Amount(), failure))) from None
        if not reserved:
            refusal = ModelError(ErrorKind.BUDGET_EXHAUSTED,
                                 f"budget exhausted: this call may use up to {worst.tokens} tokens and "
                                 f"${worst.cost_nusd / NANO_PER_USD:.6f}, more than is left of "
                                 + " and ".join(f"{s.kind} {_shown_id(s)!r}" for s in scopes if not s.unlimited))
            raise CallFailed(refusal, await finish(receipt(None, names[0], Amount(), Amount(), refusal)))

        deadline = started + min(self.retry.total_timeout_s, options.timeout_s or float("inf"))
        last_error: ModelError | None = None
        answered: tuple[ChatResponse, str] | None = None
        try:
            for name, entry in entries:
                try:
                    response = await self._try_model(request, name, entry, deadline, progress, emit, streaming)
                except ModelError as error:
                    last_error = error
                    progress.path.append(f"{name}:{error.kind.value}")
                    if error.kind in (ErrorKind.REJECTED, ErrorKind.INVALID) or progress.emitted_bytes:
                        break  # a bad request, or tokens already shown: no fallback
                    if self.clock() >= deadline:
                        break
                    continue
                progress.path.append(f"{name}:ok")
                answered = (response, name)
                break
        except BaseException:
            await self.ledger.settle(scopes, worst, Amount())
            raise
        if answered is not None:
            response, name = answered
            actual = self.prices[name].amount(response.usage)
            await self.ledger.settle(scopes, worst, actual)
            self.usage_tokens[(name, "input")] += response.usage.input_tokens
            self.usage_tokens[(name, "output")] += response.usage.output_tokens
            self.cost_nusd[name] += actual.cost_nusd
            if use_cache:
                self.cache.put(req_hash, response, self.clock(), options.cache_ttl_s or None)
            return response, await finish(receipt(response, name, worst, actual))
        # Failed: charge what may have been consumed (a cut stream's prompt and streamed part), else nothing.
        failure = last_error or ModelError(ErrorKind.UNAVAILABLE, "no candidate could be tried")
        partial: ChatResponse | None = None
        actual = Amount()
        model = progress.model or names[0]
        if progress.emitted_bytes:
            partial = ChatResponse("".join(progress.text), finish_reason="error", model=model)
            tokens = prompt_token_bound(request) + progress.emitted_bytes
            price = self.prices[model]
            actual = Amount(min(tokens, worst.tokens),
                            min(price.cost(prompt_token_bound(request), progress.emitted_bytes), worst.cost_nusd))
        await self.ledger.settle(scopes, worst, actual)
        raise CallFailed(failure, await finish(receipt(partial, model, worst, actual, failure)), partial)

    async def _over_quota(self, tenant: str, scope: Scope, quota: tuple[int, int], worst: Amount) -> None:
        """A refused reservation: QUOTA_EXCEEDED (a ModelError) when the tenant's quota is what it does not fit."""
        state = await self.ledger.read(scope)
        for name, limit, used, more in (
                ("model_max_tokens", quota[0], state.spent_tokens + state.reserved_tokens, worst.tokens),
                ("model_max_cost_nusd", quota[1], state.spent_cost_nusd + state.reserved_cost_nusd, worst.cost_nusd)):
            if limit and used + more > limit:
                raise ModelError(ErrorKind.QUOTA_EXCEEDED,
                                 f"tenant {tenant!r} is at its quota {name} = {limit} ({used} used, this call may "
                                 f"use up to {more}): nothing was sent; ask an admin to raise it "
                                 "(meshctl tenant quota)", local=True,
                                 metadata={"tenant": tenant, "quota": name, "limit": str(limit), "used": str(used)})

    def _tenant_limit(self, tenant: str, tokens: int) -> None:
        budgets = self.config.budgets
        now = self.clock()
        checks: list[tuple[TokenBucket, float, str]] = []
        if budgets.tenant_requests_per_minute:
            bucket = self._tenant_requests.setdefault(
                tenant, TokenBucket.per_minute(budgets.tenant_requests_per_minute, now))
            checks.append((bucket, 1.0, "requests"))
        if budgets.tenant_tokens_per_minute:
            bucket = self._tenant_tokens.setdefault(tenant, TokenBucket.per_minute(budgets.tenant_tokens_per_minute, now))
            checks.append((bucket, float(tokens), "tokens"))
        taken: list[tuple[TokenBucket, float]] = []
        for bucket, amount, what in checks:
            wait = bucket.take(amount, now)
            if wait > 0:
                for done, count in taken:
                    done.give_back(count, now)
                raise ModelError(ErrorKind.RATE_LIMITED, f"tenant {tenant!r} is over its {what} per minute; "
                                 f"retry in {wait:.2f}s", retry_after_s=wait)
            taken.append((bucket, amount))

    async def _try_model(self, request: ChatRequest, name: str, entry: ModelEntry, deadline: float,
                         progress: _Progress, emit: Callable[[Delta], Awaitable[None]] | None,
                         streaming: bool) -> ChatResponse:
        provider = self.providers[entry.provider]
        model_id = entry.name or name
        progress.model = name
        max_tokens = self.max_tokens(request, entry)
        attempt = 0
        while True:
            now = self.clock()
            remaining = deadline - now
            if remaining <= 0:
                raise ModelError(ErrorKind.TIMEOUT, f"{name}: the call's deadline passed", provider=provider.name,
                                 model=model_id)
            if not provider.breaker.allow(now):
                raise ModelError(ErrorKind.CIRCUIT_OPEN, f"{provider.name}: circuit breaker open",
                                 retry_after_s=provider.breaker.retry_after(now) or None, provider=provider.name,
                                 model=model_id)
            probing = provider.breaker.state == BreakerState.HALF_OPEN
            try:
                await self._rate_limit(provider, request, max_tokens, remaining)
                attempt += 1
                progress.attempts += 1
                response = await self._attempt(provider, request, model_id, max_tokens, deadline, progress, emit,
                                               streaming)
            except ModelError as error:
                if error.local:
                    if probing:
                        provider.breaker.release_probe()
                    raise  # our own limits: never counted against the provider
                provider.attempts[error.kind.value] += 1
                if error.kind in BREAKER_FAILURES:
                    provider.breaker.record_failure(self.clock())
                else:
                    provider.breaker.record_success(self.clock())  # it answered: the endpoint is alive
                self._note_transitions(provider)
                if progress.emitted_bytes:
                    raise  # the caller has seen tokens: a retry would repeat them
                delay = next_delay(self.retry, attempt, error.kind, error.retry_after_s, deadline - self.clock(),
                                   self.unit())
                if delay is None:
                    raise
                log.info("%s attempt %d failed (%s); retrying in %.3fs", name, attempt, error.kind.value, delay)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                if probing:
                    provider.breaker.release_probe()
                raise
            provider.attempts["ok"] += 1
            provider.breaker.record_success(self.clock())
            self._note_transitions(provider)
            return response

    async def _rate_limit(self, provider: ProviderRuntime, request: ChatRequest, max_tokens: int,
                          remaining: float) -> None:
        """Wait for the provider's rate limits when the wait fits the retry rules, else refuse (RATE_LIMITED)."""
        for bucket, amount in ((provider.requests, 1.0),
                               (provider.tokens, float(prompt_token_bound(request) + max_tokens))):
            if bucket is None:
                continue
            while (wait := bucket.take(amount, self.clock())) > 0:
                if wait > min(remaining, self.retry.max_retry_after_s):
                    raise ModelError(ErrorKind.RATE_LIMITED, f"{provider.name}: over its configured rate limit",
                                     retry_after_s=wait, provider=provider.name, local=True)
                await asyncio.sleep(wait)

    async def _acquire(self, provider: ProviderRuntime, remaining: float) -> None:
        verdict, token = provider.bulkhead.admit()
        if verdict == Admission.RUN:
            return
        if verdict == Admission.REFUSE:
            raise ModelError(ErrorKind.BULKHEAD_FULL,
                             f"{provider.name}: {provider.bulkhead.config.max_concurrent} calls in flight and "
                             f"{provider.bulkhead.config.max_queued} queued; try later", provider=provider.name,
                             local=True)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        provider.waiters[token] = waiter
        try:
            async with asyncio.timeout(remaining):
                await waiter
        except BaseException as error:
            if provider.bulkhead.abandon(token):
                provider.waiters.pop(token, None)
            elif waiter.done() and not waiter.cancelled():
                self._release(provider)  # woken as we gave up: pass the slot on
            if isinstance(error, TimeoutError):
                raise ModelError(ErrorKind.TIMEOUT, f"{provider.name}: deadline passed waiting for a bulkhead slot",
                                 provider=provider.name, local=True) from None
            raise

    def _release(self, provider: ProviderRuntime) -> None:
        token = provider.bulkhead.release()
        if token is not None:
            waiter = provider.waiters.pop(token, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _attempt(self, provider: ProviderRuntime, request: ChatRequest, model_id: str, max_tokens: int,
                       deadline: float, progress: _Progress, emit: Callable[[Delta], Awaitable[None]] | None,
                       streaming: bool) -> ChatResponse:
        await self._acquire(provider, deadline - self.clock())
        try:
            budget = min(self.retry.attempt_timeout_s, deadline - self.clock())
            if not streaming:
                try:
                    async with asyncio.timeout(budget):
                        return await provider.adapter.complete(request, model_id, max_tokens)
                except TimeoutError:
                    raise ModelError(ErrorKind.TIMEOUT, f"{provider.name}: no answer within {budget:.2f}s",
                                     provider=provider.name, model=model_id) from None
            # Streamed: the attempt timeout bounds the wait for the first event; then only the total deadline
            # (and the provider's read timeout between chunks).
            try:
                async with asyncio.timeout(budget) as scope:
                    async for event in provider.adapter.stream(request, model_id, max_tokens):
                        if isinstance(event, StreamEnd):
                            return event.response
                        if not progress.emitted_bytes:
                            scope.reschedule(asyncio.get_running_loop().time() + max(0.0, deadline - self.clock()))
                        if isinstance(event, TextDelta):
                            progress.text.append(event.text)
                            progress.emitted_bytes += len(event.text.encode())
                        else:
                            progress.emitted_bytes += len(event.arguments.encode()) + len(event.name) or 1
                        if emit is not None:
                            await emit(event)
            except TimeoutError:
                raise ModelError(ErrorKind.TIMEOUT, f"{provider.name}: stream stalled past its deadline",
                                 provider=provider.name, model=model_id) from None
            raise ModelError(ErrorKind.STREAM_CUT, f"{provider.name}: stream ended without its end",
                             provider=provider.name, model=model_id)
        finally:
            self._release(provider)

    def _note_transitions(self, provider: ProviderRuntime) -> None:
        transitions = provider.breaker.transitions
        while transitions:
            change = transitions.pop(0)
            event = {"kind": "breaker", "provider": provider.name, "from": change.before.value,
                     "to": change.after.value, "at": change.at}
            self.events.append(event)
            log.warning("model provider %s: circuit breaker %s -> %s", provider.name, change.before.value,
                        change.after.value)
