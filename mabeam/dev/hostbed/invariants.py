"""What every bed scenario must keep, as pure checks over what was recorded (no I/O, no clock).

Each function returns a list of violations (sentences a person can act on);
an empty list means the invariant held. The workload gathers the inputs —
the load generators' records, the daemons' incarnations, the etcd history,
the registry as each node sees it — and fails the scenario with every
violation at once.

1. **Nothing acknowledged is lost**: :func:`counter_violations` (every
   answered ``add`` is in the counter), :func:`bid_violations` (every
   acknowledged bid is in the durable log at the seq it was acknowledged
   with, and the log has no gaps), :func:`registry_violations` (every
   acknowledged name and group membership of a live owner is there).
2. **At most one coordinator leader writes at any time**:
   :func:`fencing_violations` over the etcd history.
3. **Names and groups converge on every node**: :func:`registry_violations`
   against each node's view, run by a deadline of TTL + 2 s after the heal.
4. **Failures are typed and come within their deadline**:
   :func:`failure_violations`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mabeam.dev.hostbed.load import Record
from mabeam.dev.hostbed.processes import Incarnation

#: Status codes that are the documented, typed answers of a failed operation (SDK error classes).
TYPED_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_FOUND", "ABORTED", "RESOURCE_EXHAUSTED",
                         "FAILED_PRECONDITION", "ALREADY_EXISTS", "INVALID_ARGUMENT", "PERMISSION_DENIED"})


def _at(seconds: float) -> str:
    return f"{seconds:.3f}"


def failure_violations(records: Iterable[Record], slack: float) -> list[str]:
    """Every failed operation failed with a typed status, and no operation outlived its deadline + ``slack``."""
    problems = []
    for r in records:
        elapsed = r.t1 - r.t0
        if not r.ok and r.code not in TYPED_CODES:
            problems.append(f"{r.op} {r.key} from {r.host} at {_at(r.t0)} failed untyped: {r.code} "
                            f"{r.reason} {r.message!r}")
        if elapsed > r.deadline + slack:
            problems.append(f"{r.op} {r.key} from {r.host} at {_at(r.t0)} took {elapsed:.2f}s, over its "
                            f"{r.deadline:.1f}s deadline (+{slack:.1f}s slack)")
    return problems


def counter_violations(records: Iterable[Record], values: Mapping[str, int]) -> list[str]:
    """For each counter: answered adds <= its value <= attempted adds (an unanswered add may have landed)."""
    acked: Counter[str] = Counter()
    attempted: Counter[str] = Counter()
    for r in records:
        if r.op == "call":
            attempted[r.key] += 1
            acked[r.key] += r.ok
    problems = []
    for counter, value in values.items():
        if value < acked[counter]:
            problems.append(f"counter {counter} holds {value} but {acked[counter]} adds to it were answered: "
                            f"{acked[counter] - value} acknowledged adds lost")
        if value > attempted[counter]:
            problems.append(f"counter {counter} holds {value}, more than the {attempted[counter]} adds sent")
    return problems


def bid_violations(records: Iterable[Record], acks: Mapping[str, Mapping[str, int]],
                   logs: Mapping[str, Sequence[int]], auction_of: Mapping[str, str]) -> list[str]:
    """Every acknowledged bid is durable at its seq; every auction's log is 1..n without gaps.

    ``acks``: auction → client event id → seq, as stored in etcd (the idempotency records);
    ``logs``: auction → the seqs of its stored events; ``auction_of``: host → its auction.
    """
    problems = []
    for r in records:
        if r.op != "bid" or not r.ok:
            continue
        auction = auction_of[r.host]
        stored = acks.get(auction, {}).get(r.key)
        seq = r.value[0] if isinstance(r.value, list) and r.value else None
        if stored is None:
            problems.append(f"bid {r.key} on {auction} was acknowledged (seq {seq}) but is not in etcd")
        elif stored != seq:
            problems.append(f"bid {r.key} on {auction} was acknowledged with seq {seq}, etcd has seq {stored}")
        elif seq not in set(logs.get(auction, ())):
            problems.append(f"bid {r.key} on {auction}: seq {seq} is not in the event log")
    for auction, seqs in logs.items():
        ordered = sorted(seqs)
        if ordered != list(range(1, len(ordered) + 1)):
            problems.append(f"auction {auction}: the event log is not 1..n without gaps: {ordered[:20]}...")
    return problems


# -- fencing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEvent:
    """One change in etcd, from a watch from revision 1: a put or a delete of a key."""

    revision: int
    kind: str  # put | delete
    key: str
    value: bytes
    create_revision: int  # of the key (for a delete: of the key that was deleted)


def fencing_violations(history: Sequence[HistoryEvent], election_prefix: str, coordinator_prefix: str) -> list[str]:
    """At most one coordinator leader writes at any time, and only the elected one.

    The leader at revision r is the candidate key under ``election_prefix`` with the lowest
    create revision that exists just before r (the election rule). Each revision that writes
    under ``coordinator_prefix`` is attributed to a term: the ``term`` its event or ``leader``
    records carry, or else the term of the last ``leader`` record. That term must be the
    elected leader's at r — a deposed leader whose fence failed to stop a write shows up here.
    """
    alive: dict[int, str] = {}  # create revision -> key, of candidates existing now
    by_revision: dict[int, list[HistoryEvent]] = defaultdict(list)
    for event in history:
        by_revision[event.revision].append(event)
    problems = []
    last_leader_term = 0
    for revision in sorted(by_revision):
        events = by_revision[revision]
        writes = [e for e in events if e.key.startswith(coordinator_prefix)]
        if writes:
            elected = min(alive) if alive else None
            terms = set()
            for event in writes:
                if event.kind == "put" and (event.key.endswith("/leader") or "/ev/" in event.key):
                    try:
                        terms.add(int(json.loads(event.value)["term"]))
                    except (ValueError, KeyError, TypeError):
                        problems.append(f"revision {revision}: {event.key} carries no term")
            if len(terms) > 1:
                problems.append(f"revision {revision}: one transaction wrote under several terms {sorted(terms)}")
            term = next(iter(terms)) if terms else last_leader_term
            if elected is None:
                problems.append(f"revision {revision}: coordinator keys written ({writes[0].key}...) while no "
                                f"candidate was elected (term {term})")
            elif term != elected:
                problems.append(f"revision {revision}: coordinator keys written ({writes[0].key}...) under term "
                                f"{term} while the elected leader's term was {elected}")
            for event in writes:
                if event.kind == "put" and event.key.endswith("/leader") and terms:
                    last_leader_term = next(iter(terms))
        for event in events:  # the election changes of this revision apply after its writes
            if event.key.startswith(election_prefix):
                if event.kind == "put":
                    alive[event.create_revision] = event.key
                else:
                    alive.pop(event.create_revision, None)
    return problems


# -- registry --------------------------------------------------------------------------------------


@dataclass
class Expectation:
    """Registry entries (names, or ``group/node/agent`` memberships) that must, must not, or may be present."""

    present: set[str] = field(default_factory=set)
    absent: set[str] = field(default_factory=set)
    maybe: set[str] = field(default_factory=set)

    def merge(self, other: Expectation) -> Expectation:
        """Both expectations together."""
        return Expectation(self.present | other.present, self.absent | other.absent, self.maybe | other.maybe)


def _incarnation(incarnations: Sequence[Incarnation], t0: float, t1: float) -> Incarnation | None:
    for incarnation in incarnations:
        if incarnation.started <= t0 and (incarnation.ended is None or t1 < incarnation.ended):
            return incarnation
    return None


def registry_expectation(records: Iterable[Record], op: str, meshd: Mapping[str, Sequence[Incarnation]],
                         until: float | None = None, entry: str = "key") -> Expectation:
    """What the load's ``name`` or ``join`` records imply, given each host's meshd incarnations.

    An entry acknowledged by a meshd incarnation that still runs must be present; one made by an
    incarnation that has ended must be absent (it died with its owner's lease); one that failed,
    straddled a restart, or (with ``until``) was acknowledged after ``until`` may be either.
    For joins the entry is ``group/host/agent``, as :func:`registry_violations` compares.
    """
    result = Expectation()
    for r in records:
        if r.op != op:
            continue
        name = r.key if op == "name" else "{}/{}/{}".format(r.key.split("/")[0], r.host, r.key.split("/")[1])
        incarnation = _incarnation(meshd[r.host], r.t0, r.t1)
        if incarnation is not None and incarnation.ended is not None:
            result.absent.add(name)
        elif not r.ok or incarnation is None or (until is not None and r.t1 > until):
            result.maybe.add(name)
        else:
            result.present.add(name)
    return result


def registry_violations(views: Mapping[str, set[str]], expected: Expectation, exact: bool,
                        what: str = "name") -> list[str]:
    """Each node's view has every present entry and no absent one; with ``exact`` also nothing unexpected
    and the same view on every node."""
    problems = []
    for node, seen in sorted(views.items()):
        missing = expected.present - seen
        if missing:
            problems.append(f"{node} misses {len(missing)} acknowledged {what}s of live owners: {sorted(missing)[:8]}")
        ghosts = seen & expected.absent
        if ghosts:
            problems.append(f"{node} still lists {len(ghosts)} {what}s whose owner died: {sorted(ghosts)[:8]}")
        if exact:
            unexpected = seen - expected.present - expected.maybe - expected.absent
            if unexpected:
                problems.append(f"{node} lists {len(unexpected)} {what}s nobody registered: {sorted(unexpected)[:8]}")
    if exact and len({frozenset(v) for v in views.values()}) > 1:
        nodes = sorted(views)
        first = views[nodes[0]]
        diffs = {n: sorted(views[n] ^ first)[:6] for n in nodes[1:] if views[n] != first}
        problems.append(f"the nodes disagree on {what}s (difference to {nodes[0]}): {diffs}")
    return problems
