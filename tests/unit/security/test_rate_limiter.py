"""The data-plane rate quotas (pure: the clock is passed in): messages and payload bytes per second per tenant."""

from __future__ import annotations

from mabeam.security.quota import RateLimiter
from mabeam.v1 import mesh_pb2


class Book:
    """A QuotaSource of fixed quotas."""

    def __init__(self, *quotas: mesh_pb2.TenantQuota) -> None:
        self.quotas = {q.tenant: q for q in quotas}


def test_bytes_per_second_refuses_what_the_bucket_cannot_pay_and_refills_with_time() -> None:
    limiter = RateLimiter(Book(mesh_pb2.TenantQuota(tenant="acme", max_bytes_per_second=1000)))
    assert limiter.admit("acme", 600, 100.0) is None
    assert limiter.admit("acme", 600, 100.0) == ("max_bytes_per_second", 1000)  # 400 left
    assert limiter.admit("acme", 400, 100.0) is None
    assert limiter.admit("acme", 1, 100.0) == ("max_bytes_per_second", 1000)
    assert limiter.admit("acme", 500, 100.5) is None  # half a second refills half the rate
    assert limiter.admit("globex", 10**9, 100.5) is None  # no quota, no limit
    assert limiter.rates("acme", 101.2) == (3.0, 1500.0)  # what was admitted in the last whole second


def test_messages_per_second_refuses_past_the_burst_and_both_limits_apply() -> None:
    limiter = RateLimiter(Book(mesh_pb2.TenantQuota(tenant="acme", max_messages_per_second=2,
                                                    max_bytes_per_second=100)))
    assert limiter.admit("acme", 10, 5.0) is None
    assert limiter.admit("acme", 10, 5.0) is None
    assert limiter.admit("acme", 10, 5.0) == ("max_messages_per_second", 2)
    assert limiter.admit("acme", 200, 6.0) == ("max_bytes_per_second", 100)  # a message, but too many bytes
    assert limiter.admit("acme", 80, 6.0) is None
