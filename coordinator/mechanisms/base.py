"""The common shape of every mechanism: validated events and an injected time in, actions out.

A mechanism is a deterministic state machine in the style of etcd-io/raft's
``Step``: the caller owns the clock, the network and the disk, and feeds
events one at a time with ``apply(event, now)``. The mechanism either accepts
the event (its state advances and it returns a list of actions for the caller
to carry out) or raises a :class:`~coordinator.mechanisms.errors.MechanismError`
and leaves its state exactly as it was.

Everything the coordinator needs to know about a kind is on its class, so a
new kind is one module (see docs/mechanisms/README.md, "Adding a kind"): its
``family`` (which RPCs serve it), the config fields that hold deadlines, its
escrow rules (:meth:`Mechanism.required_hold`, :meth:`Mechanism.payments`,
:meth:`Mechanism.hold_changes`) and its live status view
(:meth:`Mechanism.status_view`). Defining the subclass registers it under its
``kind``; :func:`mechanism_class` and :func:`registered_kinds` read the registry.

Replay contract (what the coordinator service relies on for failover):
the state after events ``e1..en`` is a pure function of the configuration and
the accepted ``(now, event)`` pairs in order, so persisting every *accepted*
event and calling :meth:`Mechanism.replay` rebuilds it. Rejected events are
never persisted. Time is only what ``now`` says; nothing here reads a clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, Literal, Self, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from coordinator.mechanisms.errors import InvalidConfig, InvalidEvent, MechanismClosed, MechanismError
from coordinator.mechanisms.receipts import Receipt, make_receipt

#: Largest amount accepted anywhere: keeps every sum exact in a float64 solver (< 2**53).
MAX_AMOUNT = 10**12

#: A non-negative amount in the smallest unit of account (integers only: see receipts).
Amount = Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)]
#: A strictly positive amount or quantity.
PositiveAmount = Annotated[int, Field(strict=True, gt=0, le=MAX_AMOUNT)]
#: A point in time or a duration, in the caller's clock ticks (e.g. milliseconds).
Time = Annotated[int, Field(strict=True, ge=0)]
#: A participant, item, option or order identifier.
Ident = Annotated[str, Field(strict=True, min_length=1, max_length=256)]


class Model(BaseModel):
    """Base of all configs, events, actions and outcomes: immutable, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Tick(Model):
    """Time has passed: lets deadlines, quiet periods and clocks take effect at ``now``."""

    type: Literal["tick"] = "tick"


class Close(Model):
    """The operator ends the mechanism now (where the mechanism allows an explicit close)."""

    type: Literal["close"] = "close"


class Action(Model):
    """Something the caller should do after an accepted event (send, schedule, publish)."""

    type: str


class ScheduleTick(Action):
    """Deliver a :class:`Tick` at time ``at`` or later: the next deadline this mechanism knows of."""

    type: Literal["schedule_tick"] = "schedule_tick"
    at: int


class Concluded(Action):
    """The mechanism reached its final outcome; ``receipt_hash`` identifies the receipt."""

    type: Literal["concluded"] = "concluded"
    mechanism: str
    receipt_hash: str


#: The families of mechanisms; each has its own Create/Get/submit RPCs in the contract.
Family = Literal["auction", "negotiation", "vote", "market"]
FAMILIES: tuple[Family, ...] = get_args(Family)


@dataclass(frozen=True, slots=True)
class Payment:
    """On conclusion, ``agent`` pays ``price`` out of their escrow hold (credited to the instance's seller)."""

    agent: str
    price: int


@dataclass(frozen=True, slots=True)
class HoldChange:
    """During trading, consume ``used`` of ``agent``'s hold, paying ``price`` of it to ``payee`` (rest returns)."""

    agent: str
    used: int
    price: int
    payee: str | None


class Accepted(Model):
    """One accepted event with the time it was applied: the unit of persistence and replay."""

    now: int
    event: dict[str, Any]


ConfigT = TypeVar("ConfigT", bound=Model)
OutcomeT = TypeVar("OutcomeT", bound=Model)

_REGISTRY: dict[str, type[Mechanism[Any, Any]]] = {}


def mechanism_class(kind: str) -> type[Mechanism[Any, Any]]:
    """The mechanism class registered under ``kind`` (e.g. ``"sealed"``); KeyError if unknown."""
    # Importing the package registers every built-in kind, so a bare verifier finds them all.
    import coordinator.mechanisms  # noqa: F401

    return _REGISTRY[kind]


def registered_kinds() -> list[str]:
    """All registered mechanism kinds, sorted."""
    import coordinator.mechanisms  # noqa: F401

    return sorted(_REGISTRY)


def mechanism_classes() -> list[type[Mechanism[Any, Any]]]:
    """Every registered mechanism class, sorted by kind."""
    import coordinator.mechanisms  # noqa: F401

    return [_REGISTRY[kind] for kind in sorted(_REGISTRY)]


def registered_mechanisms() -> dict[str, type[Mechanism[Any, Any]]]:
    """A copy of the registry: kind -> mechanism class."""
    import coordinator.mechanisms  # noqa: F401

    return dict(_REGISTRY)


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each offending field and why, from a pydantic error."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<root>"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


class Mechanism(ABC, Generic[ConfigT, OutcomeT]):
    """Base class: validation, time monotonicity, the accepted-event log, receipts and replay.

    Subclasses set ``kind``, ``family``, ``config_type``, ``event_type`` (a
    discriminated union of event models) and ``outcome_type``, and implement
    :meth:`_step`, which must check everything *before* mutating anything, so
    that a raised error leaves the state untouched. What the coordinator does
    with the kind beyond that — deadline ticks, escrow, the status view — is
    read from the class attributes and hooks below; their defaults suit a kind
    without deadlines, escrow or live view.
    """

    kind: ClassVar[str]
    #: Which family's RPCs serve the kind (CreateAuction/SubmitBid, CreateMarket/PlaceOrder, ...).
    family: ClassVar[Family]
    config_type: ClassVar[type[Model]]
    event_type: ClassVar[Any]
    outcome_type: ClassVar[type[Model]]
    #: Config fields holding an absolute time at which a Tick may be due; the coordinator ticks at each.
    deadline_fields: ClassVar[tuple[str, ...]] = ()
    #: The config field saying when the instance closes (what ``meshctl ... --closes-in`` fills), if any.
    closes_field: ClassVar[str | None] = None
    #: The config field of its opening time, set to "now" along with ``closes_field`` when not given.
    opens_field: ClassVar[str | None] = None
    #: Event fields naming the agent an event comes from (whose escrow hold it may change).
    participant_fields: ClassVar[tuple[str, ...]] = ("bidder", "trader", "voter", "contractor", "party")
    _event_adapter: ClassVar[TypeAdapter[Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            if cls.kind in _REGISTRY:
                raise RuntimeError(f"mechanism kind {cls.kind!r} registered twice")
            family = getattr(cls, "family", None)
            if family not in FAMILIES:
                raise TypeError(f"mechanism {cls.__name__} ({cls.kind!r}) must set family to one of {FAMILIES}, "
                                f"not {family!r}")
            fields = cls.config_type.model_fields
            named = [*cls.deadline_fields, *(f for f in (cls.closes_field, cls.opens_field) if f)]
            unknown = [name for name in named if name not in fields]
            if unknown:
                raise TypeError(f"mechanism {cls.__name__} ({cls.kind!r}) names config fields its "
                                f"{cls.config_type.__name__} does not have: {unknown}")
            cls._event_adapter = TypeAdapter(cls.event_type)
            _REGISTRY[cls.kind] = cls

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring: what the kind is, in a sentence."""
        return (cls.__doc__ or cls.kind).strip().splitlines()[0]

    def __init__(self, config: ConfigT | Mapping[str, Any]) -> None:
        try:
            validated = self.config_type.model_validate(
                config.model_dump() if isinstance(config, BaseModel) else config)
        except ValidationError as error:
            raise InvalidConfig(f"{self.kind} config: {describe_validation_error(error)}") from None
        self.config: ConfigT = validated  # type: ignore[assignment]
        self._log: list[Accepted] = []
        self._now: int | None = None
        self._outcome: OutcomeT | None = None
        self._check_config()

    # -- hooks -------------------------------------------------------------

    def _check_config(self) -> None:  # noqa: B027 - optional hook, most mechanisms need none
        """Cross-field configuration checks pydantic cannot express; raise InvalidConfig."""

    @abstractmethod
    def _step(self, event: Any, now: int) -> list[Action]:
        """Apply one parsed event at ``now``: validate fully, then mutate; set ``_outcome`` when final."""

    # -- what the coordinator asks of a kind (pure; defaults: no escrow, no live view) ----------

    def participant(self, event: Model) -> str | None:
        """The agent ``event`` comes from (the first of ``participant_fields`` it has), or None."""
        for name in self.participant_fields:
            value = getattr(event, name, None)
            if isinstance(value, str):
                return value
        return None

    def required_hold(self, event: Model, current: int, now: int) -> int | None:
        """Under escrow: what the participant must hold in total once ``event`` is accepted at ``now``.

        ``current`` is what they hold in this instance now. None: the event changes no hold.
        Raise :class:`~coordinator.mechanisms.errors.EscrowRefused` for an event that cannot be
        accepted under escrow. Called before :meth:`apply`; the state must not change.
        """
        return None

    def payments(self) -> list[Payment]:
        """Under escrow, once concluded: who pays what out of their hold (every other hold is released)."""
        return []

    def hold_changes(self, actions: Sequence[Action]) -> list[HoldChange]:
        """Under escrow: hold changes the actions of an accepted event imply (markets settle per trade)."""
        return []

    def status_view(self, now: int) -> dict[str, Any]:
        """A live view of the running instance for ``Get*`` (JSON-serialisable; keep sealed bids sealed)."""
        return {}

    # -- the public interface ---------------------------------------------

    def parse_event(self, event: BaseModel | Mapping[str, Any]) -> Model:
        """Validate an event (a model or its JSON form) against this mechanism's event union."""
        try:
            # Model instances pass through the union without a dump/re-validate round trip.
            parsed: Model = self._event_adapter.validate_python(event)
        except ValidationError as error:
            raise InvalidEvent(f"{self.kind} event: {describe_validation_error(error)}") from None
        return parsed

    def apply(self, event: BaseModel | Mapping[str, Any], now: int) -> list[Action]:
        """Apply one event at time ``now``; return the actions, or raise and change nothing."""
        parsed = self.parse_event(event)
        if type(now) is not int or now < 0:
            raise InvalidEvent(f"now must be a non-negative integer, got {now!r}")
        if self._now is not None and now < self._now:
            raise InvalidEvent(f"time went backwards: now={now} after {self._now}")
        if self._outcome is not None:
            raise MechanismClosed(f"{self.kind} has concluded; {parsed.model_dump()['type']} refused")
        actions = self._step(parsed, now)
        self._log.append(Accepted(now=now, event=parsed.model_dump(mode="json")))
        self._now = now
        if self._outcome is not None:
            actions.append(Concluded(mechanism=self.kind, receipt_hash=self.receipt().hash))
        return actions

    @property
    def concluded(self) -> bool:
        """Whether the final outcome is known (every further event raises MechanismClosed)."""
        return self._outcome is not None

    @property
    def now(self) -> int | None:
        """The time of the last accepted event, or None before the first."""
        return self._now

    def outcome(self) -> OutcomeT | None:
        """The final outcome, or None while the mechanism is still running."""
        return self._outcome

    def accepted_events(self) -> list[Accepted]:
        """Every accepted event in order: persist these to rebuild the state with :meth:`replay`."""
        return list(self._log)

    def receipt(self) -> Receipt:
        """The final outcome with its inputs and hash; MechanismError if not concluded yet."""
        if self._outcome is None:
            raise MechanismError(f"{self.kind} has no outcome yet")
        return make_receipt(self.kind, self.config.model_dump(mode="json"),
                            [entry.model_dump(mode="json") for entry in self._log],
                            self._outcome.model_dump(mode="json"))

    @classmethod
    def replay(cls, config: Model | Mapping[str, Any],
               events: Sequence[Accepted | Mapping[str, Any]]) -> Self:
        """Rebuild a mechanism by applying accepted ``(now, event)`` records in order."""
        mechanism = cls(config)  # type: ignore[arg-type]
        for entry in events:
            record = entry if isinstance(entry, Accepted) else Accepted.model_validate(entry)
            mechanism.apply(record.event, record.now)
        return mechanism
