/** MeshService: membership, leaders, the name/group registry and the data plane's gRPC face. */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { type AgentRef } from "./gen/mabeam/v1/common_pb.js";
import { GroupMode, type CallResponse } from "./gen/mabeam/v1/dataplane_pb.js";
import { MeshService, type TenantQuota, type TenantQuotaSchema, type TenantUsage, type LeaderInfo, type MemberEvent, type NameEntry, type GroupMember, type GroupSummary }
  from "./gen/mabeam/v1/mesh_pb.js";
import type { NodeInfo } from "./gen/mabeam/v1/common_pb.js";
import { call, translate } from "./errors.js";
import type { Security } from "./security.js";
import { transport, type CallOptions } from "./transport.js";

/** Where a data-plane message goes: a registered name, an endpoint, or a group (one member or all). */
export type Destination = string | { agent: Partial<AgentRef> } | { group: string; one?: boolean };

/** The `to` oneof of SendRequest/CallRequest for a destination. */
export function toOneof(to: Destination) {
  if (typeof to === "string") return { case: "toName" as const, value: to };
  if ("agent" in to) return { case: "toAgent" as const, value: to.agent as AgentRef };
  return { case: "toGroup" as const, value: { group: to.group, mode: to.one ? GroupMode.ONE : GroupMode.ALL } as never };
}

/** Retry a call that is safe to repeat while the server answers UNAVAILABLE (4 attempts, RetryInfo honoured). */
export async function retrying<T>(fn: () => Promise<T>): Promise<T> {
  let delay = 50;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (raw) {
      const error = translate(raw);
      if (error.code !== "UNAVAILABLE" || attempt >= 4) throw error;
      await new Promise((r) => setTimeout(r, error.retryAfter !== undefined ? error.retryAfter * 1000 : delay));
      delay *= 2;
    }
  }
}

/** Adapt a server stream so its failure rejects with a MabeamError. */
export async function* stream<T>(items: AsyncIterable<T>): AsyncGenerator<T> {
  try {
    yield* items;
  } catch (error) {
    throw translate(error);
  }
}

/** A MeshService client for one meshd (host:port). */
export class MeshClient {
  readonly stub: Client<typeof MeshService>;

  /** `security`: token and TLS (default: `defaultSecurity()`, the MABEAM_TOKEN / MABEAM_TLS_* environment). */
  constructor(readonly endpoint: string, readonly tenant = "", security?: Security) {
    this.stub = createClient(MeshService, transport(endpoint, false, security));
  }

  ping(opts?: CallOptions) {
    return retrying(() => this.stub.ping({}, opts));
  }

  async members(opts?: CallOptions): Promise<NodeInfo[]> {
    return (await retrying(() => this.stub.listMembers({}, opts))).members;
  }

  watchMembers(opts?: CallOptions): AsyncIterable<MemberEvent> {
    return stream(this.stub.watchMembers({}, opts));
  }

  async leader(role = "", opts?: CallOptions): Promise<LeaderInfo | undefined> {
    return (await retrying(() => this.stub.getLeader({ role }, opts))).leader;
  }

  async *watchLeader(role = "", opts?: CallOptions): AsyncIterable<LeaderInfo | undefined> {
    for await (const event of stream(this.stub.watchLeader({ role }, opts))) yield event.leader;
  }

  /** Register a cluster-unique name (ALREADY_EXISTS, reason NAME_TAKEN, when another owner holds it). */
  async registerName(name: string, agentId: string, metadata: Record<string, string> = {}, opts?: CallOptions) {
    const r = await retrying(() => this.stub.registerName(
      { tenant: this.tenant, name, target: { agentId }, metadata }, opts));
    return r.entry as NameEntry;
  }

  async unregisterName(name: string, opts?: CallOptions): Promise<void> {
    await call(this.stub.unregisterName({ tenant: this.tenant, name }, opts));
  }

  async lookup(name: string, opts?: CallOptions): Promise<NameEntry> {
    return (await retrying(() => this.stub.lookup({ tenant: this.tenant, name }, opts))).entry as NameEntry;
  }

  /**
   * Set a tenant's whole quota, kept in etcd and enforced by every node (admin only; a limit left 0 is
   * unlimited; creates the tenant). Idempotent, so retried on UNAVAILABLE. Over a limit, calls reject with
   * RESOURCE_EXHAUSTED / QUOTA_EXCEEDED.
   */
  async setTenantQuota(quota: MessageInitShape<typeof TenantQuotaSchema>, opts?: CallOptions): Promise<TenantQuota> {
    return retrying(() => this.stub.setTenantQuota({ quota }, opts));
  }

  /** A tenant's quota and what it uses now (empty: the caller's tenant; only an admin may name another). */
  async tenantUsage(tenant = "", opts?: CallOptions): Promise<TenantUsage> {
    return retrying(() => this.stub.getTenantUsage({ tenant }, opts));
  }

  async names(prefix = "", opts?: CallOptions): Promise<NameEntry[]> {
    return (await retrying(() => this.stub.listNames({ tenant: this.tenant, prefix }, opts))).entries;
  }

  async joinGroup(group: string, agentId: string, opts?: CallOptions): Promise<void> {
    await retrying(() => this.stub.joinGroup({ tenant: this.tenant, group, member: { agentId } }, opts));
  }

  async leaveGroup(group: string, agentId: string, opts?: CallOptions): Promise<boolean> {
    return (await call(this.stub.leaveGroup({ tenant: this.tenant, group, member: { agentId } }, opts))).removed;
  }

  async groupMembers(group: string, opts?: CallOptions): Promise<GroupMember[]> {
    return (await retrying(() => this.stub.groupMembers({ tenant: this.tenant, group }, opts))).members;
  }

  async groups(opts?: CallOptions): Promise<GroupSummary[]> {
    return (await retrying(() => this.stub.listGroups({ tenant: this.tenant }, opts))).groups;
  }

  /** A one-way data-plane message; the ids of the messages sent (one per receiver). */
  async send(to: Destination, payload: Uint8Array, opts?: CallOptions): Promise<bigint[]> {
    return (await call(this.stub.send({ tenant: this.tenant, to: toOneof(to), payload }, opts))).messageIds;
  }

  /** A data-plane call; `timeoutMs` is the call's deadline (5 s by default). */
  async call(to: Destination, payload: Uint8Array, opts: CallOptions = {}): Promise<CallResponse> {
    const timeoutMs = opts.timeoutMs ?? 5000;
    return call(this.stub.call({ tenant: this.tenant, to: toOneof(to), payload, timeoutMs }, { ...opts, timeoutMs }));
  }

  /** Open an endpoint with names and groups and iterate what it receives (the first item carries its address). */
  subscribe(names: string[], groups: string[] = [], maxPending = 0, opts?: CallOptions) {
    return stream(this.stub.subscribe({ tenant: this.tenant, names, groups, maxPending }, opts));
  }
}

export { create };
