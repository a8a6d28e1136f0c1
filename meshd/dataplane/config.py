"""Configuration of the data plane (one pydantic model, embedded in meshd's config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class DataPlaneConfig(BaseModel):
    """Data-plane settings; defaults suit dev mode (loopback, ephemeral ports, no CURVE)."""

    model_config = ConfigDict(extra="forbid")

    #: Interface the four channel sockets bind to; loopback by default.
    bind_host: str = "127.0.0.1"
    #: First of four consecutive ports (control, high, normal, bulk); 0 means ephemeral ports.
    base_port: int = Field(default=0, ge=0, le=65532)
    #: Where local processes attach: an ``ipc://`` path (default: a temp dir) or ``tcp://127.0.0.1:PORT``.
    attach_address: str = ""
    #: Force loopback TCP for local attach (platforms without ipc://).
    attach_tcp: bool = False
    #: Messages above this many bytes travel on bulk in chunks of this size.
    chunk_size: int = Field(default=1 << 20, ge=1024)
    #: Largest payload accepted from a sender; above it the sender gets MessageTooLarge.
    max_message_size: int = Field(default=64 << 20, ge=1)
    #: Bytes of partial chunked messages a receiver keeps at most.
    max_reassembly_bytes: int = Field(default=256 << 20, ge=1)
    #: Reassembly buffers kept for reuse once their payload is released (bench/hol.py: a fresh 64 MiB
    #: mmap costs ~10x the copy in page faults and ~12 ms to unmap). 0 disables the pool.
    reassembly_pool_bytes: int = Field(default=128 << 20, ge=0)
    #: Seconds a partial chunked message may wait for its next chunk.
    reassembly_timeout: float = Field(default=30.0, gt=0)
    #: Envelopes per batch at most (flush on size); a batch also flushes when the loop is idle.
    #: 256 rather than 64: with packed payloads, 100 B casts went ~8% faster with ~12% less CPU
    #: per message on both sides (bench/dataplane.py); bursts only, a lone message never waits.
    max_batch: int = Field(default=256, ge=1, le=4096)
    #: A batch whose payloads are all at most this many bytes sends them as one frame (Batch.payload_sizes);
    #: 0 sends every payload as its own frame.
    pack_below: int = Field(default=16 << 10, ge=0)
    #: Payload bytes per batch at most.
    max_batch_bytes: int = Field(default=256 << 10, ge=1)
    #: Default mailbox limit of an endpoint; beyond it messages bounce with RESOURCE_EXHAUSTED.
    default_max_pending: int = Field(default=1024, ge=1)
    #: Envelopes queued per (peer, channel) before send() waits and send_nowait() raises.
    max_outbound: int = Field(default=65536, ge=1)
    #: ZeroMQ send/receive high-water marks (messages, i.e. batches) per socket.
    sndhwm: int = Field(default=1000, ge=0)
    rcvhwm: int = Field(default=1000, ge=0)
    #: Heartbeat period on control, and the silence after which a peer is suspect / down.
    heartbeat_interval: float = Field(default=0.2, gt=0)
    suspect_after: float = Field(default=0.6, gt=0)
    down_after: float = Field(default=1.2, gt=0)
    #: Acknowledged mode: retransmit unacked messages after this many seconds.
    retransmit_after: float = Field(default=0.3, gt=0)
    #: Unacknowledged messages kept per peer; beyond it acknowledged sends wait.
    max_unacked: int = Field(default=8192, ge=1)
    #: Receiver dedup window (message ids remembered per node).
    dedup_window: int = Field(default=65536, ge=1)
    #: Default call timeout in seconds.
    default_call_timeout: float = Field(default=5.0, gt=0)
    #: Envelopes per round each channel may take before lower channels get a turn (control, high, normal, bulk).
    quanta: tuple[int, int, int, int] = (256, 128, 64, 2)
    #: Documented single-channel mode for comparison benches: every message on one socket (normal).
    single_channel: bool = False
    #: One ZeroMQ context (own I/O thread) per channel; measured to cut urgent latency under bulk.
    context_per_channel: bool = True
    #: Run the bulk channel's ZeroMQ I/O thread under SCHED_IDLE (Linux): bulk bytes move only when
    #: no normal-priority thread wants a core, so urgent channels are not queued behind them for CPU.
    bulk_sched_idle: bool = True
    #: CurveZMQ on the four channels; keys are generated unless given (Z85).
    curve: bool = False
    curve_public_key: str = ""
    curve_secret_key: str = ""
    #: Seconds a CURVE handshake from a key that membership has not announced yet is held before it is
    #: denied: a new or restarted peer may dial before this node's watch has seen it join.
    curve_key_wait: float = Field(default=10.0, ge=0, le=25)

    @field_validator("down_after")
    @classmethod
    def _down_after_suspect(cls, value: float, info: object) -> float:
        data = getattr(info, "data", {})
        if "suspect_after" in data and value < data["suspect_after"]:
            raise ValueError("down_after must be >= suspect_after")
        return value
