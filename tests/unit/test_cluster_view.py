"""The cluster view: a pure state machine from etcd reads and watch batches to lookups and changes."""

from mabeam import keys
from mabeam.etcd.client import KeyValue, WatchBatch, WatchEvent
from mabeam.v1 import common_pb2, mesh_pb2
from meshd.view import ClusterView, LeaderChange, MemberChange

C = "c1"


def kv(key: bytes, value: bytes, create: int, mod: int | None = None, lease: int = 0) -> KeyValue:
    return KeyValue(key, value, create, mod or create, 1, lease)


def member(node_id: str, rev: int) -> KeyValue:
    return kv(keys.member(C, node_id), common_pb2.NodeInfo(node_id=node_id).SerializeToString(), rev)


def candidate(role: str, lease: int, node_id: str, rev: int) -> KeyValue:
    value = mesh_pb2.LeaderInfo(role=role, node_id=node_id).SerializeToString()
    return kv(keys.election(C, role) + f"{lease:016x}".encode(), value, rev)


def put(item: KeyValue) -> WatchEvent:
    return WatchEvent("put", item, None)


def delete(item: KeyValue, rev: int) -> WatchEvent:
    return WatchEvent("delete", KeyValue(item.key, b"", 0, rev, 0, 0), None)


def test_reload_then_watch_tracks_members_and_reports_changes() -> None:
    view = ClusterView(C)
    changes = view.reload([member("a", 2), member("b", 3)], 3)
    assert [(c.type, c.node.node_id) for c in changes if isinstance(c, MemberChange)] == [
        (mesh_pb2.MemberEvent.JOINED, "a"), (mesh_pb2.MemberEvent.JOINED, "b")]
    changes = view.apply(WatchBatch(5, (put(member("c", 4)), delete(member("a", 2), 5))))
    assert [(c.type, c.node.node_id) for c in changes] == [
        (mesh_pb2.MemberEvent.JOINED, "c"), (mesh_pb2.MemberEvent.LEFT, "a")]
    assert sorted(view.members) == ["b", "c"] and view.revision == 5


def test_reload_diffs_against_the_previous_view() -> None:
    view = ClusterView(C)
    view.reload([member("a", 2), member("b", 3)], 3)
    changes = view.reload([member("b", 3), member("c", 9)], 9)
    kinds = sorted((c.type, c.node.node_id) for c in changes if isinstance(c, MemberChange))
    assert kinds == [(mesh_pb2.MemberEvent.JOINED, "c"), (mesh_pb2.MemberEvent.LEFT, "a")]


def test_leader_is_lowest_create_revision_and_changes_on_delete() -> None:
    view = ClusterView(C)
    first, second = candidate("mesh", 1, "a", 10), candidate("mesh", 2, "b", 11)
    changes = view.reload([second, first], 11)
    assert view.leader("mesh").node_id == "a" and view.leader("mesh").term == 10
    assert [c.leader.node_id for c in changes if isinstance(c, LeaderChange)] == ["a"]
    changes = view.apply(WatchBatch(12, (delete(first, 12),)))
    assert [(c.leader.node_id, c.leader.term) for c in changes] == [("b", 11)]
    changes = view.apply(WatchBatch(13, (delete(second, 13),)))
    assert [c.leader.node_id for c in changes] == [""]
    assert view.leader("nobody").node_id == ""


def test_names_groups_and_junk() -> None:
    view = ClusterView(C)
    entry = mesh_pb2.NameEntry(tenant="default", name="x",
                               target=common_pb2.AgentRef(node_id="a", agent_id="1")).SerializeToString()
    gm = mesh_pb2.GroupMember(tenant="default", group="g").SerializeToString()
    view.reload([
        kv(keys.name(C, "default", "x"), entry, 4),
        kv(keys.group_member(C, "default", "g", "b", "2"), gm, 5),
        kv(keys.group_member(C, "default", "g", "a", "1"), gm, 6),
        kv(keys.member(C, "junk"), b"\xff\xff\xff", 7),
        kv(b"/elsewhere/x", b"", 8),
    ], 8)
    assert view.names[("default", "x")].target.agent_id == "1" and view.names[("default", "x")].revision == 4
    assert len(view.group_members("default", "g")) == 2
    assert view.bad_values == 1 and "junk" not in view.members
    view.apply(WatchBatch(9, (delete(kv(keys.group_member(C, "default", "g", "a", "1"), b"", 6), 9),
                              delete(kv(keys.group_member(C, "default", "g", "b", "2"), b"", 5), 9))))
    assert ("default", "g") not in view.groups


def test_tenant_model_spend_and_usage_units_follow_their_keys() -> None:
    """The use GetTenantUsage and /metrics report: model spend (spent + reserved) and counted units."""
    view = ClusterView("c1")
    budget = kv(keys.budget("c1", "tenant", "acme"), b'{"spent_tokens": 24, "reserved_tokens": 37, '
                b'"spent_cost_nusd": 100, "reserved_cost_nusd": 50}', 2)
    unit = kv(keys.usage_holder("c1", "acme", "instances", "i1"), b"", 3)
    view.reload([budget, unit, kv(keys.budget("c1", "run", "acme:r1"), b"{}", 4)], 4)
    assert view.model_spend == {"acme": (61.0, 150.0)}
    assert view.holders == {("acme", "instances"): {"i1"}}
    view.apply(WatchBatch(6, (put(kv(keys.budget("c1", "tenant", "acme"), b"not json", 2, 5)),
                              delete(unit, 6))))
    assert view.model_spend == {"acme": (61.0, 150.0)} and view.bad_values == 1  # a bad value keeps the last
    assert view.holders == {}
    view.apply(WatchBatch(7, (delete(budget, 7),)))
    assert view.model_spend == {}
