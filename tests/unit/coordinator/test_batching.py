"""The durable-write model: packing atomic groups into bounded transactions, contiguous event logs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.batching import GroupTooLarge, pack, take_fitting
from coordinator.instances import check_sequence

groups_strategy = st.lists(st.dictionaries(st.binary(min_size=1, max_size=2), st.binary(max_size=2), min_size=1,
                                           max_size=8), max_size=40)


@given(groups_strategy)
def test_pack_keeps_groups_whole_in_order_and_bounded(groups) -> None:
    # Applying the packed transactions in order gives the same store as applying the groups one by one.
    batches = pack(groups, max_ops=10)
    assert all(len(b) <= 10 for b in batches)
    expected: dict = {}
    for group in groups:
        expected.update(group)
    got: dict = {}
    for batch in batches:
        got.update(batch)
    assert got == expected
    assert sum(1 for _ in batches) <= len(groups)


def test_oversized_group_is_refused_and_take_fitting() -> None:
    with pytest.raises(GroupTooLarge):
        pack([{bytes([i]): b"" for i in range(11)}], max_ops=10)
    groups = [{b"a": b"", b"b": b""}, {b"c": b""}, {b"d": b"", b"e": b""}]
    assert take_fitting(groups, max_ops=3) == 2
    assert take_fitting(groups, max_ops=100) == 3
    assert take_fitting([{bytes([i]): b"" for i in range(5)}], max_ops=3) == 1


def test_event_log_must_be_contiguous() -> None:
    check_sequence("i", [1, 2, 3])
    with pytest.raises(ValueError):
        check_sequence("i", [1, 3])
