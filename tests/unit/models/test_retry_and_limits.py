"""Retry policy, Retry-After parsing, token buckets and the bulkhead table."""

from __future__ import annotations

import email.utils

from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.models.limits import Admission, BulkheadConfig, BulkheadTable, TokenBucket
from agentd.models.retry import RetryConfig, backoff, next_delay, parse_retry_after
from agentd.models.types import ErrorKind

CONFIG = RetryConfig(max_attempts=4, base_s=0.1, cap_s=1.0, max_retry_after_s=5.0)


def test_never_retries_rejections() -> None:
    for kind in (ErrorKind.REJECTED, ErrorKind.AUTH, ErrorKind.BUDGET_EXHAUSTED, ErrorKind.INVALID,
                 ErrorKind.CIRCUIT_OPEN, ErrorKind.BULKHEAD_FULL):
        assert next_delay(CONFIG, 1, kind, None, 100.0, 0.5) is None


def test_retries_until_attempts_are_spent() -> None:
    assert next_delay(CONFIG, 3, ErrorKind.UNAVAILABLE, None, 100.0, 0.5) is not None
    assert next_delay(CONFIG, 4, ErrorKind.UNAVAILABLE, None, 100.0, 0.5) is None


def test_retry_after_is_a_floor_and_too_long_gives_up() -> None:
    assert next_delay(CONFIG, 1, ErrorKind.RATE_LIMITED, 2.0, 100.0, 0.0) == 2.0
    assert next_delay(CONFIG, 1, ErrorKind.RATE_LIMITED, 6.0, 100.0, 0.0) is None


def test_gives_up_when_the_wait_would_pass_the_deadline() -> None:
    assert next_delay(CONFIG, 1, ErrorKind.RATE_LIMITED, 2.0, 1.5, 0.0) is None


@given(st.integers(1, 40), st.floats(0, 1, exclude_max=True))
def test_full_jitter_stays_within_the_exponential_ceiling(attempt: int, unit: float) -> None:
    delay = backoff(CONFIG, attempt, unit)
    assert 0.0 <= delay <= min(CONFIG.cap_s, CONFIG.base_s * 2 ** (attempt - 1))


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 0.5 ", now) == 0.5
    assert parse_retry_after(None, now, "250") == 0.25
    assert parse_retry_after(email.utils.formatdate(now + 7, usegmt=True), now) == 7.0
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_bucket_takes_then_reports_the_wait() -> None:
    bucket = TokenBucket(capacity=10, rate=2, now=0.0)
    assert bucket.take(10, 0.0) == 0.0
    assert bucket.take(4, 0.0) == 2.0
    assert bucket.take(4, 2.0) == 0.0


@settings(max_examples=300)
@given(st.floats(1, 100), st.floats(0.1, 50),
       st.lists(st.tuples(st.floats(0, 200), st.floats(0, 5)), max_size=60))
def test_bucket_never_negative_never_above_capacity_and_never_exceeds_its_rate(
        capacity: float, rate: float, ops: list[tuple[float, float]]) -> None:
    bucket = TokenBucket(capacity, rate, 0.0)
    now, taken = 0.0, 0.0
    for amount, dt in ops:
        now += dt
        if bucket.take(amount, now) == 0.0:
            taken += min(amount, capacity)
        assert -1e-9 <= bucket.tokens <= capacity + 1e-9
    assert taken <= capacity + rate * now + 1e-6


@settings(max_examples=200)
@given(st.integers(1, 5), st.integers(0, 5), st.lists(st.sampled_from(["admit", "release", "abandon"]), max_size=80))
def test_bulkhead_bounds(limit: int, queue: int, ops: list[str]) -> None:
    table = BulkheadTable(BulkheadConfig(limit, queue))
    running = 0
    waiting: list[int] = []
    for op in ops:
        if op == "admit":
            verdict, token = table.admit()
            if verdict == Admission.RUN:
                running += 1
            elif verdict == Admission.QUEUE:
                waiting.append(token)
        elif op == "release" and running:
            woken = table.release()
            running -= 1
            if woken is not None:
                assert woken == waiting.pop(0)  # FIFO
                running += 1
        elif op == "abandon" and waiting:
            assert table.abandon(waiting.pop())
        assert table.in_flight == running <= limit
        assert len(table.queue) == len(waiting) <= queue
