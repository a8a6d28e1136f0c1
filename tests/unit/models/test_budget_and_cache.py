"""Budget arithmetic (reserve/settle never negative, never above the limit), prices, canonical hashes, cache."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.models.budget import Amount, BudgetState, Price, prompt_token_bound, reserve, settle, worst_case
from agentd.models.cache import ResponseCache, cacheable, request_hash
from agentd.models.types import ChatRequest, ChatResponse, Message, Usage


def test_price_from_usd_and_rounding_up() -> None:
    price = Price.from_usd(0.0005, 0.0015)
    assert price == Price(500_000, 1_500_000)
    assert price.cost(1, 0) == 500  # 500,000 / 1000 nano-dollars
    assert Price(1, 1).cost(1, 0) == 1  # rounds up, never under-charges


def test_prompt_bound_counts_bytes() -> None:
    request = ChatRequest("m", (Message("user", "héllo"),))
    assert prompt_token_bound(request) >= len("héllo".encode())


amounts = st.builds(Amount, st.integers(0, 2000), st.integers(0, 10**7))


@settings(max_examples=300)
@given(st.one_of(st.none(), st.integers(0, 50_000)), st.one_of(st.none(), st.integers(0, 10**8)),
       st.lists(st.tuples(amounts, st.floats(0, 1)), max_size=60))
def test_reserve_settle_never_negative_never_above_the_limit(limit_tokens: int | None, limit_cost: int | None,
                                                            calls: list[tuple[Amount, float]]) -> None:
    """Each call reserves its worst case, then settles an actual usage at most that worst case."""
    state = BudgetState(limit_tokens, limit_cost)
    open_calls: list[tuple[Amount, float]] = []
    for amount, fraction in calls:
        new = reserve(state, amount)
        if new is None:
            room = state.remaining()
            assert amount.tokens > room.tokens or amount.cost_nusd > room.cost_nusd
        else:
            state = new
            open_calls.append((amount, fraction))
        if len(open_calls) > 3:
            reserved, frac = open_calls.pop(0)
            actual = Amount(int(reserved.tokens * frac), int(reserved.cost_nusd * frac))
            state = settle(state, reserved, actual)
        for value in (state.spent_tokens, state.reserved_tokens, state.spent_cost_nusd, state.reserved_cost_nusd):
            assert value >= 0
        if limit_tokens is not None:
            assert state.spent_tokens + state.reserved_tokens <= limit_tokens
        if limit_cost is not None:
            assert state.spent_cost_nusd + state.reserved_cost_nusd <= limit_cost
    for reserved, _ in open_calls:
        state = settle(state, reserved, Amount())
    assert state.reserved_tokens == 0 and state.reserved_cost_nusd == 0
    assert state.overspent == Amount()


def test_budget_json_round_trip_and_rejects_garbage() -> None:
    state = BudgetState(100, None, 5, 6, 7, 8)
    assert BudgetState.from_json(state.to_json()) == state
    for bad in (b"[]", b'{"spent_tokens": -1}', b'{"spent_tokens": "x"}'):
        try:
            BudgetState.from_json(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_worst_case_covers_real_usage_of_any_tokenizer() -> None:
    request = ChatRequest("m", (Message("system", "be brief"), Message("user", "what is 2+2?")), max_tokens=50)
    price = Price.from_usd(0.001, 0.002)
    worst = worst_case(request, 50, price)
    actual = price.amount(Usage(input_tokens=len("be brief what is 2+2?"), output_tokens=50))
    assert actual.tokens <= worst.tokens and actual.cost_nusd <= worst.cost_nusd


def test_canonical_hash_ignores_metadata_and_key_order() -> None:
    a = ChatRequest("m", (Message("user", "hi"),), temperature=0.0, metadata={"x": "1"},
                    response_schema={"a": 1, "b": 2})
    b = ChatRequest("m", (Message("user", "hi"),), temperature=0.0, metadata={"y": "2"},
                    response_schema={"b": 2, "a": 1})
    c = ChatRequest("m", (Message("user", "hi!"),), temperature=0.0)
    assert request_hash(a) == request_hash(b) != request_hash(c)


def test_cacheable_only_at_temperature_zero_unless_asked() -> None:
    assert cacheable(ChatRequest("m", (), temperature=0.0), allow_sampled=False)
    assert not cacheable(ChatRequest("m", (), temperature=0.7), allow_sampled=False)
    assert not cacheable(ChatRequest("m", ()), allow_sampled=False)
    assert cacheable(ChatRequest("m", (), temperature=0.7), allow_sampled=True)


def test_cache_ttl_and_lru() -> None:
    from agentd.models.cache import CacheConfig

    cache = ResponseCache(CacheConfig(max_entries=2, ttl_s=10))
    answer = ChatResponse("x")
    cache.put("a", answer, 0.0)
    cache.put("b", answer, 0.0, ttl_s=1)
    assert cache.get("a", 5.0) is answer
    assert cache.get("b", 5.0) is None  # its own TTL ran out
    cache.put("c", answer, 5.0)
    cache.put("d", answer, 5.0)  # evicts the least recently used ("a")
    assert cache.get("a", 6.0) is None and cache.get("d", 6.0) is answer
