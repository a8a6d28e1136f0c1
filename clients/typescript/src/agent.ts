/**
 * External agents: a Node process that is an agent on the mesh. It attaches to its host's meshd
 * over one MeshService.AttachAgent stream, registers names and groups, and handles casts and
 * calls one at a time, in order; agentd's agents call it by name and it calls them. When the
 * stream drops it reconnects with exponential backoff and attaches again. Payloads follow
 * agentd's msgpack convention (docs/sdks.md); a call made while handling a call keeps that call's
 * deadline (pass the handler's `ctx`).
 */
import { createClient, type Client } from "@connectrpc/connect";
import { decode, encode } from "@msgpack/msgpack";
import type { AgentRef } from "./gen/mabeam/v1/common_pb.js";
import { GroupMode, MessageKind, type Envelope } from "./gen/mabeam/v1/dataplane_pb.js";
import type { AgentDelivery, AgentOutboundResult, AgentStreamIn } from "./gen/mabeam/v1/external_agent_pb.js";
import { MeshService } from "./gen/mabeam/v1/mesh_pb.js";
import { asCodeName, codeName, MabeamError, translate } from "./errors.js";
import type { Security } from "./security.js";
import { AsyncQueue, transport } from "./transport.js";

/** What a handler gets besides the message: the sender, the deadline, and a way to call on. */
export interface Context {
  agent: ExternalAgent;
  sender?: AgentRef;
  isCall: boolean;
  /** Absolute deadline (ms since the epoch) of the call being handled; undefined for a cast. */
  deadline?: number;
  envelope: Envelope;
}

export interface AgentOptions {
  names?: string[];
  groups?: string[];
  tenant?: string;
  /** Mailbox bound at meshd; senders beyond it get RESOURCE_EXHAUSTED (0: 1024). */
  maxPending?: number;
  /** Answer a call; a thrown MabeamError keeps its code at the caller, anything else is UNKNOWN. */
  onCall?: (msg: unknown, ctx: Context) => Promise<unknown> | unknown;
  onCast?: (msg: unknown, ctx: Context) => Promise<void> | void;
  onBounce?: (code: string, message: string) => void;
  backoffMs?: [number, number];
  /** Token and TLS (default: `defaultSecurity()`, the MABEAM_TOKEN / MABEAM_TLS_* environment). */
  security?: Security;
}

type Body = { to?: string; msg?: unknown; ok?: unknown; error?: { code: string; message: string } };

export class ExternalAgent {
  readonly names: string[];
  ref: AgentRef | undefined;
  attachments = 0;
  private stub: Client<typeof MeshService>;
  private out: AsyncQueue<AgentStreamIn> | undefined;
  private results = new Map<bigint, (r: AgentOutboundResult) => void>();
  private nextId = 0n;
  private abort = new AbortController();
  private attachedWaiters: (() => void)[] = [];
  private runner: Promise<void> | undefined;
  lastError: MabeamError | undefined;

  constructor(readonly endpoint: string, readonly options: AgentOptions = {}) {
    this.names = options.names ?? [];
    this.stub = createClient(MeshService, transport(endpoint, false, options.security));
  }

  /** Start serving in the background and resolve once attached (reject with the attach error after `timeoutMs`). */
  async start(timeoutMs = 30000): Promise<this> {
    this.runner = this.run();
    const attached = new Promise<void>((resolve) => this.attachedWaiters.push(resolve));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(this.lastError ?? new MabeamError("DEADLINE_EXCEEDED", "not attached in time")), timeoutMs);
    });
    try {
      await Promise.race([attached, timeout, this.runner.then(() => { throw this.lastError; })]);
    } finally {
      clearTimeout(timer);
    }
    return this;
  }

  /** Detach (the names go) and stop reconnecting. */
  async stop(): Promise<void> {
    this.abort.abort();
    this.out?.close();
    await this.runner?.catch(() => undefined);
  }

  /** Attach and serve until stop(); reconnect with exponential backoff and jitter when the stream drops. */
  async run(): Promise<void> {
    const [lo, hi] = this.options.backoffMs ?? [50, 2000];
    let delay = lo;
    while (!this.abort.signal.aborted) {
      const before = this.attachments;
      try {
        await this.serveOnce();
      } catch (error) {
        this.lastError = translate(error);
        if (this.lastError.code === "INVALID_ARGUMENT" && this.attachments === 0) return;
      }
      if (this.abort.signal.aborted) return;
      if (this.attachments > before) delay = lo;
      await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random())));
      delay = Math.min(delay * 2, hi);
    }
  }

  private async serveOnce(): Promise<void> {
    const out = new AsyncQueue<AgentStreamIn>();
    const o = this.options;
    out.push({ body: { case: "attach", value: { tenant: o.tenant ?? "", agentId: "", names: this.names,
      groups: o.groups ?? [], maxPending: o.maxPending ?? 0 } } } as never);
    const deliveries = new AsyncQueue<AgentDelivery>();
    const handling = this.handle(deliveries, out);
    try {
      for await (const message of this.stub.attachAgent(out, { signal: this.abort.signal })) {
        const body = message.body;
        if (body.case === "attached") {
          this.ref = body.value.endpoint;
          this.out = out;
          this.attachments++;
          for (const resolve of this.attachedWaiters.splice(0)) resolve();
        } else if (body.case === "delivery") {
          deliveries.push(body.value);
        } else if (body.case === "result") {
          const resolve = this.results.get(body.value.requestId);
          this.results.delete(body.value.requestId);
          resolve?.(body.value);
        }
      }
    } finally {
      this.ref = undefined;
      this.out = undefined;
      out.close();
      deliveries.close();
      await handling;
      for (const [requestId, resolve] of this.results) {
        resolve({ requestId, code: 14, message: "the agent's stream ended" } as AgentOutboundResult);
      }
      this.results.clear();
    }
  }

  private async handle(deliveries: AsyncQueue<AgentDelivery>, out: AsyncQueue<AgentStreamIn>): Promise<void> {
    for await (const delivery of deliveries) {
      const envelope = delivery.envelope!;
      if (envelope.kind === MessageKind.ERROR) {
        this.options.onBounce?.(codeName(envelope.errorCode), envelope.errorMessage);
        continue;
      }
      const reply = await this.dispatch(delivery, envelope);
      out.push({ body: { case: "handled", value: { deliveryId: delivery.deliveryId, reply, errorCode: 0,
        errorMessage: "" } } } as never);
    }
  }

  /** Decode, run the handler, encode the reply (agentd's payload convention). */
  async dispatch(delivery: { payload: Uint8Array }, envelope: Envelope): Promise<Uint8Array> {
    const isCall = envelope.kind === MessageKind.CALL;
    let body: Body;
    try {
      body = decode(delivery.payload) as Body;
    } catch (error) {
      return isCall ? encode({ error: { code: "INVALID_ARGUMENT", message: `undecodable payload: ${error}` } }) : new Uint8Array();
    }
    const msg = body && typeof body === "object" && "msg" in body ? body.msg : body;
    const deadline = isCall && envelope.deadlineUnixMs > 0n ? Number(envelope.deadlineUnixMs) : undefined;
    const ctx: Context = { agent: this, sender: envelope.sender, isCall, deadline, envelope };
    try {
      if (!isCall) {
        await this.options.onCast?.(msg, ctx);
        return new Uint8Array();
      }
      if (!this.options.onCall) throw new MabeamError("UNIMPLEMENTED", "this agent does not handle calls");
      return encode({ ok: (await this.options.onCall(msg, ctx)) ?? null }, { ignoreUndefined: true });
    } catch (error) {
      const e = error instanceof MabeamError ? error : new MabeamError("UNKNOWN", String(error));
      return encode({ error: { code: e.code, message: e.message } });
    }
  }

  private async outbound(to: { case: "toName"; value: string } | { case: "toGroup"; value: never },
    payload: Uint8Array, isCall: boolean, timeoutMs: number): Promise<AgentOutboundResult> {
    const out = this.out;
    if (!out) throw new MabeamError("UNAVAILABLE", "the agent is not attached");
    const requestId = ++this.nextId;
    const result = new Promise<AgentOutboundResult>((resolve) => this.results.set(requestId, resolve));
    out.push({ body: { case: "outbound", value: { requestId, to, payload, call: isCall, timeoutMs, channel: 0,
      traceparent: "" } } } as never);
    const r = await result;
    if (r.code !== 0) throw new MabeamError(codeName(r.code), r.message);
    return r;
  }

  /**
   * Call an agent by name. Inside a handler pass its ctx: the call then keeps what is left of the
   * handled call's deadline. `timeoutMs` defaults to 5 s.
   */
  async call<T = unknown>(to: string, msg: unknown, opts: { ctx?: Context; timeoutMs?: number } = {}): Promise<T> {
    let timeoutMs = opts.timeoutMs ?? 5000;
    if (opts.ctx?.deadline !== undefined) {
      const left = opts.ctx.deadline - Date.now();
      if (left <= 0) throw new MabeamError("DEADLINE_EXCEEDED", "the call being handled is past its deadline");
      timeoutMs = Math.min(timeoutMs, left);
    }
    const r = await this.outbound({ case: "toName", value: to }, encode({ to, msg }), true, Math.max(1, Math.floor(timeoutMs)));
    const body = decode(r.payload) as Body;
    if (body && typeof body === "object" && body.error) throw new MabeamError(asCodeName(body.error.code), body.error.message);
    return (body && typeof body === "object" && "ok" in body ? body.ok : body) as T;
  }

  /** Cast to an agent by name (NOT_FOUND at once for an unknown name). */
  async cast(to: string, msg: unknown): Promise<void> {
    await this.outbound({ case: "toName", value: to }, encode({ to, msg, sender: this.names[0] ?? null }), false, 0);
  }

  /** Cast to every member of a group cluster-wide ("all") or to one in turn ("one"). */
  async castGroup(group: string, msg: unknown, mode: "all" | "one" = "all"): Promise<void> {
    const address = { group, mode: mode === "one" ? GroupMode.ONE : GroupMode.ALL } as never;
    const body = { group, mode, msg, sender: this.names[0] ?? null, origin: new Uint8Array() };
    await this.outbound({ case: "toGroup", value: address }, encode(body), false, 0);
  }
}
