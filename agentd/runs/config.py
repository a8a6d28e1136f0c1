"""The ``[runs]`` table of agentd's config: the store, leases, recovery, cancellation and retention."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentd.runs.retention import RetentionPolicy


class RunsConfig(BaseModel):
    """Durable runs (docs/runs.md). They need etcd (agentd's ``etcd``): without it RunService answers UNAVAILABLE."""

    model_config = ConfigDict(extra="forbid")

    #: ``sqlite:///ABSOLUTE/PATH`` or ``postgresql://...``; empty: ``<data_dir>/runs.sqlite``.
    store: str = ""
    #: Seconds an executor's lease lives without renewal (a dead executor's run is resumed after about this).
    lease_ttl: int = Field(default=3, ge=2, le=300)
    #: Takeovers after a lost executor before the run fails with "recovery_budget_exhausted".
    max_recoveries: int = Field(default=3, ge=0, le=10_000)
    #: Deliveries of one frame to workers that died before the run fails with "worker_crashed".
    max_frame_attempts: int = Field(default=3, ge=1, le=100)
    #: Seconds a handler gets to return after cancellation before it is interrupted.
    cancel_grace_s: float = Field(default=5.0, ge=0, le=3600)
    #: The janitor's sweep period (it also reacts at once when an executor key vanishes).
    janitor_interval_s: float = Field(default=5.0, gt=0, le=3600)
    #: A run still pending (never claimed) this long is taken over by the janitor.
    pending_grace_s: float = Field(default=5.0, ge=0, le=3600)
    #: Retention per event class: glob on the event type -> seconds its payload is kept.
    payload_ttl_s: dict[str, float] = Field(default_factory=dict)
    #: Seconds events below a run's latest checkpoint are kept (the retention floor rises); None: forever.
    history_ttl_s: float | None = Field(default=None, ge=0)
    #: Largest HTTP request body (a frame or a start request), bytes.
    max_body_bytes: int = Field(default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    @field_validator("store")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///ABSOLUTE/PATH or postgresql://...")
        return value

    def retention(self) -> RetentionPolicy:
        """The retention policy these settings describe."""
        return RetentionPolicy(dict(self.payload_ttl_s), self.history_ttl_s)
