/**
 * CoordinatorService: auctions, negotiation, votes, markets, variables and the ledger, through
 * whichever coordinator is active. A standby's WRONG_NODE answer names the leader and the client
 * follows it; during a failover calls are retried until `failoverTimeoutMs` (safe: every mutating
 * call carries an idempotency key).
 */
import { createClient, type Client } from "@connectrpc/connect";
import { randomBytes } from "node:crypto";
import { CoordinatorService, type BidAck, type Instance, type SubmitEventRequest, type SubmitEventResponse,
  type SubmitBidsRequest, type Variable, type Balance } from "./gen/mabeam/v1/coordinator_pb.js";
import { codeName, MabeamError, translate } from "./errors.js";
import type { Security } from "./security.js";
import { AsyncQueue, transport, type CallOptions } from "./transport.js";

const RETRYABLE = new Set(["WRONG_NODE", "NOT_DURABLE", "ETCD_UNAVAILABLE", ""]);
type Stub = Client<typeof CoordinatorService>;

function newId(): string {
  return randomBytes(8).toString("hex");
}

function json(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** Parse a *_json field ("" is undefined). */
export function parseJson<T = unknown>(text: string): T {
  return (text ? JSON.parse(text) : undefined) as T;
}

export interface CreateOptions {
  instanceId?: string;
  escrow?: boolean;
  seller?: string;
  bindVariable?: string;
  bindField?: string;
}

export class CoordinatorClient {
  private stubs = new Map<string, Stub>();
  private current: string;
  private tried = 0;
  redirects = 0;

  /** `security`: token and TLS (default: `defaultSecurity()`, the MABEAM_TOKEN / MABEAM_TLS_* environment). */
  constructor(readonly endpoints: string[], readonly tenant = "", public failoverTimeoutMs = 15000,
    readonly security?: Security) {
    if (endpoints.length === 0) throw new MabeamError("INVALID_ARGUMENT", "at least one coordinator endpoint is required");
    this.current = endpoints[0];
  }

  /** The stub of the node believed to lead, and its endpoint. */
  stub(): [Stub, string] {
    const endpoint = this.current;
    let stub = this.stubs.get(endpoint);
    if (!stub) this.stubs.set(endpoint, (stub = createClient(CoordinatorService, transport(endpoint, true, this.security))));
    return [stub, endpoint];
  }

  /** After an error from `endpoint`: the delay before a retry on the (new) leader, or the error to throw. */
  failedOver(raw: unknown, endpoint: string, deadline: number): number | MabeamError {
    const error = translate(raw);
    // A connection torn down under a live call (a killed coordinator) is UNAVAILABLE without a reason here
    // (src/grpc.ts); a server going away may also reset its streams (CANCELLED, INTERNAL) or end them without
    // a mabeam reason (UNKNOWN): all as safe to repeat as UNAVAILABLE. (The caller's own cancellation is not
    // retried: invoke() checks its signal first.)
    const torn = ["INTERNAL", "UNKNOWN", "CANCELLED"].includes(error.code) && !error.reason;
    if (!((error.code === "UNAVAILABLE" && RETRYABLE.has(error.reason)) || torn) || Date.now() > deadline) return error;
    const hint = error.metadata["leader"];
    if (error.reason === "WRONG_NODE" && hint && hint !== endpoint) {
      this.current = hint;
      this.redirects++;
      return 0;
    }
    this.tried++;
    this.current = this.endpoints[this.tried % this.endpoints.length];
    return Math.min(50 * this.tried, 200);
  }

  private async invoke<T>(fn: (stub: Stub) => Promise<T>, opts?: CallOptions): Promise<T> {
    const deadline = Date.now() + this.failoverTimeoutMs;
    for (;;) {
      const [stub, endpoint] = this.stub();
      try {
        return await fn(stub);
      } catch (raw) {
        if (opts?.signal?.aborted) throw translate(raw); // the caller cancelled: no failover
        const next = this.failedOver(raw, endpoint, deadline);
        if (next instanceof MabeamError) throw next;
        await new Promise((r) => setTimeout(r, next));
      }
    }
  }

  leader(opts?: CallOptions) {
    return this.invoke((s) => s.getCoordinatorLeader({}, opts), opts);
  }

  private create(family: string, kind: string, config: unknown, o: CreateOptions, opts?: CallOptions): Promise<Instance> {
    const request = { tenant: this.tenant, kind, configJson: json(config), instanceId: o.instanceId ?? newId(),
      escrow: o.escrow ?? false, seller: o.seller ?? "", bindVariable: o.bindVariable ?? "", bindField: o.bindField ?? "" };
    return this.invoke((s) => family === "negotiation" ? s.createNegotiation(request, opts)
      : family === "vote" ? s.createVote(request, opts)
      : family === "market" ? s.createMarket(request, opts) : s.createAuction(request, opts), opts);
  }

  createAuction(kind: string, config: unknown, o: CreateOptions = {}, opts?: CallOptions) {
    return this.create("auction", kind, config, o, opts);
  }
  createNegotiation(kind: string, config: unknown, o: CreateOptions = {}, opts?: CallOptions) {
    return this.create("negotiation", kind, config, o, opts);
  }
  createVote(config: unknown, o: CreateOptions = {}, opts?: CallOptions) {
    return this.create("vote", "vote", config, o, opts);
  }
  createMarket(kind: string, config: unknown = {}, o: CreateOptions = {}, opts?: CallOptions) {
    return this.create("market", kind, config, o, opts);
  }
  get(id: string, opts?: CallOptions) {
    return this.invoke((s) => s.getAuction({ id }, opts), opts);
  }
  async list(state = "", opts?: CallOptions) {
    return (await this.invoke((s) => s.listAuctions({ tenant: this.tenant, state }, opts), opts)).instances;
  }
  cancel(id: string, reason = "", opts?: CallOptions) {
    return this.invoke((s) => s.cancelAuction({ id, reason }, opts), opts);
  }
  closeInstance(id: string, opts?: CallOptions) {
    return this.invoke((s) => s.closeInstance({ id }, opts), opts);
  }

  private submit(kind: string, id: string, event: unknown, clientEventId?: string, opts?: CallOptions) {
    const request = { id, eventJson: json(event), clientEventId: clientEventId ?? newId() };
    return this.invoke((s) => kind === "negotiate" ? s.negotiate(request, opts) : kind === "vote" ? s.castVote(request, opts)
      : kind === "order" ? s.placeOrder(request, opts) : s.submitBid(request, opts), opts);
  }
  /** One bid, acknowledged once durable; the same clientEventId makes a retry safe. */
  submitBid(id: string, event: unknown, clientEventId?: string, opts?: CallOptions) {
    return this.submit("bid", id, event, clientEventId, opts);
  }
  negotiate(id: string, event: unknown, clientEventId?: string, opts?: CallOptions) {
    return this.submit("negotiate", id, event, clientEventId, opts);
  }
  castVote(id: string, event: unknown, clientEventId?: string, opts?: CallOptions) {
    return this.submit("vote", id, event, clientEventId, opts);
  }
  placeOrder(id: string, event: unknown, clientEventId?: string, opts?: CallOptions) {
    return this.submit("order", id, event, clientEventId, opts);
  }
  cancelOrder(id: string, orderId: string, trader: string, opts?: CallOptions) {
    return this.invoke((s) => s.cancelOrder({ id, orderId, trader, clientEventId: newId() }, opts), opts);
  }
  book(id: string, opts?: CallOptions) {
    return this.invoke((s) => s.getBook({ id }, opts), opts);
  }
  /** An instance's accepted events from `fromSeq`, then a final one with finalState set. */
  /**
   * A watch's items. Watches are served by every node from etcd, so when the stream breaks the way a killed
   * coordinator breaks it (UNAVAILABLE, or INTERNAL/UNKNOWN/CANCELLED without a reason) it is opened again on
   * the next node from the cursor after the last item (`resume` moves it), until the failover timeout passes
   * without an item: every item once, in order, and no transport error (the caller's own abort ends it).
   */
  private async *watching<T>(open: (stub: Stub) => AsyncIterable<T>, resume: (item: T) => void, opts?: CallOptions): AsyncGenerator<T> {
    let deadline = Date.now() + this.failoverTimeoutMs;
    for (;;) {
      const [stub, endpoint] = this.stub();
      try {
        for await (const item of open(stub)) {
          resume(item);
          deadline = Date.now() + this.failoverTimeoutMs;
          yield item;
        }
        return;
      } catch (raw) {
        if (opts?.signal?.aborted) throw translate(raw);
        const next = this.failedOver(raw, endpoint, deadline);
        if (next instanceof MabeamError) throw next;
        await new Promise((r) => setTimeout(r, next));
      }
    }
  }

  /** An instance's accepted events from `fromSeq`, then a final one (resumed elsewhere if a coordinator dies). */
  watch(id: string, fromSeq = 0, opts?: CallOptions) {
    const request = { id, fromSeq: BigInt(fromSeq) };
    return this.watching((s) => s.watchAuction(request, opts), (e) => { if (e.seq > 0n) request.fromSeq = e.seq + 1n; }, opts);
  }
  /** A market's trades from `fromSeq` (resumed from the last trade's seq, as the Python SDK). */
  watchTrades(id: string, fromSeq = 0, opts?: CallOptions) {
    const request = { id, fromSeq: BigInt(fromSeq) };
    return this.watching((s) => s.watchTrades(request, opts), (t) => { request.fromSeq = t.seq; }, opts);
  }

  createVariable(name: string, schema: unknown, initial: unknown, historyLimit = 0, opts?: CallOptions): Promise<Variable> {
    return this.invoke((s) => s.createVariable({ tenant: this.tenant, name, schemaJson: json(schema),
      initialJson: JSON.stringify(initial), historyLimit }, opts), opts);
  }
  variable(name: string, opts?: CallOptions): Promise<Variable> {
    return this.invoke((s) => s.getVariable({ tenant: this.tenant, name }, opts), opts);
  }
  async variables(opts?: CallOptions): Promise<Variable[]> {
    return (await this.invoke((s) => s.listVariables({ tenant: this.tenant }, opts), opts)).variables;
  }
  /** Compare-and-set: ABORTED (reason VERSION_MISMATCH) when expectedVersion is stale. */
  setVariable(name: string, value: unknown, expectedVersion: number, opts?: CallOptions): Promise<Variable> {
    return this.invoke((s) => s.setVariable({ tenant: this.tenant, name, valueJson: JSON.stringify(value),
      expectedVersion: BigInt(expectedVersion) }, opts), opts);
  }
  async variableHistory(name: string, opts?: CallOptions): Promise<Variable[]> {
    return (await this.invoke((s) => s.variableHistory({ tenant: this.tenant, name }, opts), opts)).versions;
  }
  /** Versions from `fromVersion` (0: the current one), then each new one (resumed elsewhere if a coordinator dies). */
  watchVariable(name: string, fromVersion = 0, opts?: CallOptions): AsyncIterable<Variable> {
    const request = { tenant: this.tenant, name, fromVersion: BigInt(fromVersion) };
    return this.watching((s) => s.watchVariable(request, opts), (v) => { request.fromVersion = v.version + 1n; }, opts);
  }

  deposit(agent: string, amount: number, opts?: CallOptions): Promise<Balance> {
    return this.invoke((s) => s.deposit({ tenant: this.tenant, agent, amount: BigInt(amount), clientOpId: newId() }, opts), opts);
  }
  transfer(fromAgent: string, toAgent: string, amount: number, opts?: CallOptions) {
    return this.invoke((s) => s.transfer({ tenant: this.tenant, fromAgent, toAgent, amount: BigInt(amount), clientOpId: newId() }, opts), opts);
  }
  balance(agent: string, opts?: CallOptions): Promise<Balance> {
    return this.invoke((s) => s.getBalance({ tenant: this.tenant, agent }, opts), opts);
  }
  async balances(opts?: CallOptions): Promise<Balance[]> {
    return (await this.invoke((s) => s.listBalances({ tenant: this.tenant }, opts), opts)).balances;
  }

  /** A SubmitBids stream that follows the leader and resends unacknowledged bids (see BidStream). */
  bidStream(): BidStream {
    return new BidStream(this);
  }
}

interface Pending {
  request: { id: string; eventJson: string; clientEventId: string };
  resolve: (r: SubmitEventResponse) => void;
  reject: (e: MabeamError) => void;
}

/**
 * Bids over one SubmitBids stream. When the stream ends with UNAVAILABLE (WRONG_NODE, NOT_DURABLE,
 * a killed coordinator) it is reopened on the leader and every unacknowledged bid is sent again
 * with the same client_event_id, which the coordinator answers once.
 */
export class BidStream {
  private pending = new Map<string, Pending>();
  private queue: AsyncQueue<SubmitBidsRequest> | undefined;
  private running = false;
  reconnects = 0;

  constructor(private readonly client: CoordinatorClient) {}

  /** Submit one bid; resolves once it is durable, rejects with why it was refused. */
  submit(id: string, event: unknown, clientEventId = newId()): Promise<SubmitEventResponse> {
    const key = `${id}\u0000${clientEventId}`;
    return new Promise((resolve, reject) => {
      const request = { id, eventJson: json(event), clientEventId };
      this.pending.set(key, { request, resolve, reject });
      this.queue?.push({ bids: [request] } as never);
      if (!this.running) void this.run();
    });
  }

  private answer(ack: BidAck): void {
    const key = `${ack.id}\u0000${ack.clientEventId}`;
    const entry = this.pending.get(key);
    if (!entry) return;
    this.pending.delete(key);
    if (ack.outcome.case === "error") {
      const e = ack.outcome.value;
      entry.reject(new MabeamError(codeName(e.code), e.message, { reason: e.reason }));
    } else if (ack.outcome.case === "result") {
      entry.resolve(ack.outcome.value);
    }
  }

  private async run(): Promise<void> {
    this.running = true;
    let deadline = 0;
    try {
      while (this.pending.size > 0) {
        const [stub, endpoint] = this.client.stub();
        const queue = (this.queue = new AsyncQueue<SubmitBidsRequest>());
        const all = [...this.pending.values()].map((p) => p.request);
        for (let i = 0; i < all.length; i += 256) queue.push({ bids: all.slice(i, i + 256) } as never);
        try {
          for await (const response of stub.submitBids(queue)) {
            deadline = 0;
            for (const ack of response.acks) this.answer(ack);
            if (this.pending.size === 0) queue.close();
          }
        } catch (raw) {
          if (deadline === 0) deadline = Date.now() + this.client.failoverTimeoutMs;
          const next = this.client.failedOver(raw, endpoint, deadline);
          if (next instanceof MabeamError) {
            for (const p of this.pending.values()) p.reject(next);
            this.pending.clear();
            return;
          }
          this.reconnects++;
          await new Promise((r) => setTimeout(r, next));
        } finally {
          queue.close();
          this.queue = undefined;
        }
      }
    } finally {
      this.running = false;
    }
  }
}

export type { SubmitEventRequest };
