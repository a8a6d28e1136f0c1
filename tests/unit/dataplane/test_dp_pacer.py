"""The SDK's pacer (mabeam.dataplane.attach._Pacer, a mirror of meshd's rate-quota buckets, time passed in) and
the quota refusal it learns from, across an ERROR envelope."""

from __future__ import annotations

from mabeam.dataplane.attach import PACE_BURST, PACE_FOR, _Pacer


def _sent_in(pacer: _Pacer, start: float, seconds: float, size: int, step: float = 0.0005) -> int:
    """How many messages of ``size`` bytes a sender as fast as allowed gets out in ``seconds``."""
    sent, now = 0, start
    while now < start + seconds:
        wait = pacer.spend(size, now)
        if wait == 0:
            sent += 1
        else:
            now += max(step, wait)
    return sent


def test_after_a_throttle_nothing_goes_for_the_pause_then_the_message_rate_is_the_limit() -> None:
    pacer = _Pacer()
    pacer.throttle("max_messages_per_second", 1000, 0.02, now=100.0)
    assert pacer.spend(100, 100.01) > 0  # inside the pause
    sent = _sent_in(pacer, 100.0, 2.0, 100)
    assert 1000 * (2.0 - 0.02 - PACE_BURST) - 2 <= sent <= 1000 * 2.0


def test_a_byte_quota_paces_by_size() -> None:
    pacer = _Pacer()
    pacer.throttle("max_bytes_per_second", 10_000, 0.0, now=0.0)
    assert _sent_in(pacer, 0.0, 2.0, 1000) <= 20 + 1


def test_a_throttle_while_pacing_at_that_limit_halves_the_pace_which_grows_back() -> None:
    pacer = _Pacer()
    pacer.throttle("max_messages_per_second", 1000, 0.0, now=0.0)
    pacer.throttle("max_messages_per_second", 1000, 0.0, now=0.5)  # the quota is shared: slow down
    assert pacer.rates["max_messages_per_second"] == 500
    pacer.spend(1, 1.6)  # a second without a throttle: + limit / 8
    assert pacer.rates["max_messages_per_second"] == 625


def test_pacing_ends_after_pace_for_without_a_throttle_and_unknown_quotas_only_pause() -> None:
    pacer = _Pacer()
    pacer.throttle("max_messages_per_second", 1000, 0.0, now=0.0)
    assert pacer.spend(1, PACE_FOR + 0.1) == -1.0
    other = _Pacer()
    other.throttle("max_something_new", 5, 0.5, now=0.0)
    assert other.rates == {} and other.spend(1, 0.1) > 0 and other.spend(1, 0.6) == 0


def test_a_quota_refusal_crosses_an_error_envelope_whole() -> None:
    from mabeam.dataplane.errors import QuotaExceeded, error_from_envelope, fill_envelope
    from mabeam.v1 import dataplane_pb2 as pb

    env = pb.Envelope(kind=pb.MESSAGE_KIND_ERROR)
    fill_envelope(env, QuotaExceeded("over", "acme", "max_messages_per_second", 2000, 2100, 0.02))
    back = error_from_envelope(pb.Envelope.FromString(env.SerializeToString()))
    assert isinstance(back, QuotaExceeded) and back.reason == "QUOTA_EXCEEDED" and back.message == "over"
    assert back.metadata == {"tenant": "acme", "quota": "max_messages_per_second", "limit": "2000", "used": "2100"}
    assert back.retry_after_s == 0.02
    plain = pb.Envelope(kind=pb.MESSAGE_KIND_ERROR, error_code=8, error_message="mailbox full")  # an older meshd
    old = error_from_envelope(plain)
    assert old.reason == "MAILBOX_FULL" and old.retry_after_s is None
