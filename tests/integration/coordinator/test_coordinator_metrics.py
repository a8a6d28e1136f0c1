"""The coordinator's /metrics against a real process: leadership, instances, events, group commits, streams."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from mabeam.dev.testing import wait_until


def _samples(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_coordinator_exports_its_series(coordinators) -> None:
    from mabeam_client.coordinator import SyncCoordinatorClient
    from mabeam_client.errors import MabeamError

    cluster = coordinators(2)
    leader = cluster.leader()
    standby = next(n for n in cluster.coordinators if n is not leader)
    leader_metrics = leader.metrics_address  # from the ready line: the address the process bound
    assert leader_metrics and standby.metrics_address
    with SyncCoordinatorClient(cluster.coordinator_endpoints) as coord:
        auction = coord.create_auction("sealed", {"pricing": "first"})
        coord.create_vote({"rule": "majority", "options": ["x", "y"], "voters": {"v": 1}})
        coord.submit_bid(auction.id, {"type": "bid", "bidder": "a", "amount": 5}, client_event_id="c1")
        coord.submit_bid(auction.id, {"type": "bid", "bidder": "a", "amount": 5}, client_event_id="c1")  # retry
        try:
            coord.submit_bid(auction.id, {"type": "bid", "bidder": "b", "amount": -1})
        except MabeamError:
            pass
        coord.close_instance(auction.id)

    def exported() -> dict | None:
        got = _samples(leader_metrics)
        wanted = {
            ("mabeam_coordinator_is_leader", ()): 1.0,
            ("mabeam_coordinator_instances", (("family", "auction"), ("state", "concluded"))): 1.0,
            ("mabeam_coordinator_instances", (("family", "vote"), ("state", "open"))): 1.0,
            ("mabeam_coordinator_events_total", (("outcome", "accepted"),)): 1.0,
            ("mabeam_coordinator_events_total", (("outcome", "duplicate"),)): 1.0,
            ("mabeam_coordinator_events_total", (("outcome", "rejected"),)): 1.0,
            ("mabeam_coordinator_terms_total", ()): 1.0,
            ("mabeam_coordinator_streams", (("kind", "bids"),)): 0.0,
        }
        return got if all(got.get(key) == value for key, value in wanted.items()) else None

    samples = wait_until(exported, 10, what="the leader's series")
    assert samples[("mabeam_coordinator_term", ())] > 0
    assert samples[("mabeam_coordinator_commit_groups_count", ())] >= 3  # meta, meta, bid, close...
    assert samples[("mabeam_coordinator_commit_seconds_count", ())] >= 3
    assert samples[("mabeam_coordinator_commit_failures_total", ())] == 0
    standby_samples = _samples(standby.metrics_address)
    assert standby_samples[("mabeam_coordinator_is_leader", ())] == 0
    assert not any(name == "mabeam_coordinator_instances" for name, _ in standby_samples)
