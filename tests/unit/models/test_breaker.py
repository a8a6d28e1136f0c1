"""The circuit breaker's transitions: a table of scenarios, then properties over random event sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.models.breaker import BreakerConfig, BreakerState, CircuitBreaker


def test_opens_after_threshold_failures_within_window() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3, window_s=10, open_s=5))
    for t in (0.0, 1.0):
        assert breaker.allow(t)
        breaker.record_failure(t)
    assert breaker.state == BreakerState.CLOSED
    breaker.record_failure(2.0)
    assert breaker.state == BreakerState.OPEN
    assert not breaker.allow(3.0)
    assert breaker.retry_after(3.0) == 4.0


def test_failures_outside_the_window_age_out() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3, window_s=10, open_s=5))
    breaker.record_failure(0.0)
    breaker.record_failure(1.0)
    breaker.record_failure(11.5)  # the first two are older than 10 s
    assert breaker.state == BreakerState.CLOSED
    assert breaker.recent_failures == 1


def test_half_open_admits_exactly_one_probe_and_success_closes() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, window_s=10, open_s=5))
    breaker.record_failure(0.0)
    assert breaker.state == BreakerState.OPEN
    assert breaker.allow(5.0)  # the probe
    assert breaker.state == BreakerState.HALF_OPEN
    assert not breaker.allow(5.1)  # everyone else waits for the probe
    breaker.record_success(5.2)
    assert breaker.state == BreakerState.CLOSED
    assert breaker.allow(5.3)
    assert breaker.probes == 1


def test_failed_probe_reopens_for_another_period() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, window_s=10, open_s=5))
    breaker.record_failure(0.0)
    assert breaker.allow(6.0)
    breaker.record_failure(6.5)
    assert breaker.state == BreakerState.OPEN
    assert not breaker.allow(11.0)
    assert breaker.allow(11.5)


def test_cancelled_probe_lets_the_next_caller_probe() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=1, window_s=10, open_s=1))
    breaker.record_failure(0.0)
    assert breaker.allow(2.0)
    breaker.release_probe()
    assert breaker.allow(2.1)


events = st.lists(st.tuples(st.sampled_from(["allow", "ok", "fail", "release"]),
                            st.floats(min_value=0, max_value=3)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(events, st.integers(1, 5), st.floats(0.5, 10), st.floats(0.5, 10))
def test_properties_over_random_sequences(seq: list[tuple[str, float]], threshold: int, window: float,
                                          open_s: float) -> None:
    """Whatever happens: at most one probe in flight; open only after `threshold` failures or a failed probe;
    an open breaker refuses until open_s has passed."""
    breaker = CircuitBreaker(BreakerConfig(threshold, window, open_s))
    now = 0.0
    probe_in_flight = False
    for op, dt in seq:
        now += dt
        before = breaker.state
        if op == "allow":
            allowed = breaker.allow(now)
            if before == BreakerState.OPEN and breaker.state == BreakerState.OPEN:
                assert not allowed
            if breaker.state == BreakerState.HALF_OPEN and allowed:
                assert not probe_in_flight, "two probes at once"
                probe_in_flight = True
        elif op == "ok":
            breaker.record_success(now)
            if before == BreakerState.HALF_OPEN:
                assert breaker.state == BreakerState.CLOSED
            probe_in_flight = False
        elif op == "fail":
            breaker.record_failure(now)
            if before == BreakerState.HALF_OPEN:
                assert breaker.state == BreakerState.OPEN
            probe_in_flight = False
        else:
            breaker.release_probe()
            probe_in_flight = False
        assert breaker.recent_failures < threshold or breaker.state != BreakerState.CLOSED
        for t in breaker.transitions:
            assert (t.before, t.after) in {(BreakerState.CLOSED, BreakerState.OPEN),
                                           (BreakerState.OPEN, BreakerState.HALF_OPEN),
                                           (BreakerState.HALF_OPEN, BreakerState.CLOSED),
                                           (BreakerState.HALF_OPEN, BreakerState.OPEN)}
