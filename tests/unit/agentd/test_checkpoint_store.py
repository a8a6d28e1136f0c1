"""Checkpoints: msgpack/JSON codecs (never pickle), pydantic state, the SQLite WAL store."""

from __future__ import annotations

from pathlib import Path

import pytest
from agents_for_tests import CounterState, make_registry

from agentd.codec import codec, restore
from agentd.runtime import Runtime
from agentd.store import CheckpointStore
from agentd.supervision import Restart
from mabeam.dev.testing import async_wait_until


@pytest.mark.parametrize("name", ["msgpack", "json"])
def test_codec_round_trip_with_pydantic(name: str) -> None:
    c = codec(name)
    state = CounterState(n=3, history=[1, 2])
    assert restore(c.decode(c.encode(state)), CounterState) == state
    assert c.decode(c.encode({"a": [1, 2.5, None, "x"], "t": (1, 2)})) == {"a": [1, 2.5, None, "x"], "t": [1, 2]}


@pytest.mark.parametrize("name", ["msgpack", "json"])
def test_codec_refuses_arbitrary_objects(name: str) -> None:
    # Only plain data and pydantic models: no pickle fallback, ever.
    with pytest.raises(TypeError, match="cannot encode"):
        codec(name).encode({"x": object()})


def test_unknown_codec() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        codec("pickle")


def test_store_is_wal_and_versions_checkpoints(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp.sqlite")
    assert store.journal_mode() == "wal"
    assert store.put("a", "json", b"1") == 1
    assert store.put("a", "json", b"2") == 2
    assert store.get("a") == ("json", b"2", 2)
    other = CheckpointStore(tmp_path / "cp.sqlite")  # a second process would open it like this
    assert other.get("a") == ("json", b"2", 2)
    store.delete("a")
    assert other.get("a") is None and store.count() == 0
    store.close()
    other.close()


async def test_checkpoint_survives_a_new_runtime_on_the_same_store(tmp_path: Path) -> None:
    # What a restarted worker does: same store file, same agent id -> restored state.
    path = tmp_path / "cp.sqlite"
    async with Runtime(make_registry(), store=CheckpointStore(path), codec_name="json") as rt:
        await rt.spawn("counter", {"start": 10}, child_id="c", restart=Restart.PERMANENT)
        rt.send("c", 5)
        await async_wait_until(lambda: rt.store.count() == 1)
        rt.store.close()
        rt.store = CheckpointStore(":memory:")  # keep the file's row: this runtime "dies" here
    async with Runtime(make_registry(), store=CheckpointStore(path)) as rt2:
        await rt2.spawn("counter", {"start": 0}, child_id="c", restart=Restart.PERMANENT)
        assert await rt2.call("c", "get") == 15
