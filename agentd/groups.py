"""Process groups (Erlang ``pg``) of one place: who is in which group, and whose turn it is.

A pure table, no I/O: the runtime keeps one per worker (members are agent ids),
the worker pool one per agentd (members are ``(worker id, agent id)``). Joining
twice is one membership; a member may be in many groups. ``pick`` is the
round-robin of the data plane's ``one`` mode: a counter per group over the
members in sorted order (``docs/dataplane.md``, "groups").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

#: Group cast modes, as in the data plane: every member, or one in round-robin turn.
GROUP_MODES = ("all", "one")

#: A member: an agent id (runtime) or a (worker id, agent id) pair (worker pool).
M = TypeVar("M", str, tuple[str, str])


class GroupTable(Generic[M]):
    """Group name -> members, member -> groups, and a round-robin counter per group."""

    def __init__(self) -> None:
        self._members: dict[str, set[M]] = {}
        self._sorted: dict[str, list[M]] = {}
        self._of: dict[M, set[str]] = {}
        self._turn: dict[str, int] = {}

    def join(self, group: str, member: M) -> bool:
        """Add ``member`` to ``group``; False when it already was a member."""
        members = self._members.setdefault(group, set())
        if member in members:
            return False
        members.add(member)
        self._sorted.pop(group, None)
        self._of.setdefault(member, set()).add(group)
        return True

    def leave(self, group: str, member: M) -> bool:
        """Remove ``member`` from ``group``; False when it was not a member."""
        members = self._members.get(group)
        if members is None or member not in members:
            return False
        members.discard(member)
        self._sorted.pop(group, None)
        if not members:
            del self._members[group]
            self._turn.pop(group, None)
        groups = self._of[member]
        groups.discard(group)
        if not groups:
            del self._of[member]
        return True

    def leave_all(self, member: M) -> list[str]:
        """Remove ``member`` from every group (it exited); the groups it was in, sorted."""
        groups = sorted(self._of.get(member, ()))
        for group in groups:
            self.leave(group, member)
        return groups

    def remove_where(self, predicate: Callable[[M], bool]) -> list[str]:
        """Remove every member matching ``predicate`` (e.g. all of a dead worker's); the groups left empty."""
        emptied: list[str] = []
        for member in [m for m in self._of if predicate(m)]:
            for group in self.leave_all(member):
                if group not in self._members:
                    emptied.append(group)
        return sorted(set(emptied))

    def members(self, group: str) -> list[M]:
        """The members of ``group``, sorted (empty when nobody is in it)."""
        cached = self._sorted.get(group)
        if cached is None:
            cached = sorted(self._members.get(group, ()))
            if cached:
                self._sorted[group] = cached
        return list(cached)

    def __contains__(self, member: object) -> bool:
        """True when ``member`` is in at least one group."""
        return member in self._of

    def size(self, group: str) -> int:
        """How many members ``group`` has."""
        return len(self._members.get(group, ()))

    def pick(self, group: str) -> M | None:
        """The next member in round-robin order, or None when the group is empty."""
        if group not in self._members:
            return None
        members = self._sorted.get(group)
        if members is None:
            members = self._sorted[group] = sorted(self._members[group])
        turn = self._turn.get(group, 0)
        self._turn[group] = turn + 1
        return members[turn % len(members)]

    def groups(self) -> list[str]:
        """Every non-empty group, sorted."""
        return sorted(self._members)

    def groups_of(self, member: M) -> list[str]:
        """The groups ``member`` is in, sorted."""
        return sorted(self._of.get(member, ()))
