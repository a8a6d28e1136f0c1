"""The local checkpoint store: one SQLite file in WAL mode, one row per agent (its last checkpoint).

Several worker processes share the file; WAL lets readers run beside the one
writer, and ``busy_timeout`` makes a writer wait for the lock instead of failing.
Rows are keyed by the agent's stable id (its supervision path), which survives
restarts of the agent and of its worker.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    agent_id   TEXT PRIMARY KEY,
    codec      TEXT NOT NULL,
    data       BLOB NOT NULL,
    version    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
)
"""


class CheckpointStore:
    """Last-checkpoint-wins storage of encoded agent state."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._db.execute("PRAGMA busy_timeout=10000")
        # Switching to WAL takes an exclusive lock and does not wait on the busy handler:
        # several workers opening a new file at once retry here.
        for attempt in range(100):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 99:
                    raise
                time.sleep(0.01)
        # NORMAL in WAL mode: durable against process crashes (kill -9), not against power loss.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        # Ids with a checkpoint, read once: a fresh agent's start then needs no query
        # (each agent is written by one process at a time: the worker hosting it).
        self._ids = {row[0] for row in self._db.execute("SELECT agent_id FROM checkpoints")}

    def put(self, agent_id: str, codec: str, data: bytes) -> int:
        """Store an agent's checkpoint; returns its version (1 for the first)."""
        row = self._db.execute(
            "INSERT INTO checkpoints(agent_id, codec, data, version, updated_ms) VALUES(?,?,?,1,?) "
            "ON CONFLICT(agent_id) DO UPDATE SET codec=excluded.codec, data=excluded.data, "
            "version=checkpoints.version+1, updated_ms=excluded.updated_ms RETURNING version",
            (agent_id, codec, data, int(time.time() * 1000))).fetchone()
        self._ids.add(agent_id)
        return int(row[0])

    def get(self, agent_id: str) -> tuple[str, bytes, int] | None:
        """(codec, data, version) of an agent's last checkpoint, or None."""
        if agent_id not in self._ids:
            return None
        row = self._db.execute("SELECT codec, data, version FROM checkpoints WHERE agent_id=?",
                               (agent_id,)).fetchone()
        return None if row is None else (str(row[0]), bytes(row[1]), int(row[2]))

    def delete(self, agent_id: str) -> None:
        """Forget an agent's checkpoint (it was stopped for good)."""
        if agent_id in self._ids:
            self._db.execute("DELETE FROM checkpoints WHERE agent_id=?", (agent_id,))
            self._ids.discard(agent_id)

    def count(self) -> int:
        """How many agents have a checkpoint."""
        return int(self._db.execute("SELECT count(*) FROM checkpoints").fetchone()[0])

    def journal_mode(self) -> str:
        """The SQLite journal mode in effect ("wal")."""
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        self._db.close()
