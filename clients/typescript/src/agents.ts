/** AgentService: spawn, stop, inspect and message agentd's agents (messages and replies as JSON values). */
import { createClient, type Client } from "@connectrpc/connect";
import { AgentService, type AgentInfo, type TreeNode } from "./gen/mabeam/v1/agent_pb.js";
import { call } from "./errors.js";
import { retrying } from "./mesh.js";
import type { Security } from "./security.js";
import { transport, type CallOptions } from "./transport.js";

export interface SpawnOptions {
  name?: string;
  supervisor?: string;
  isolation?: "shared" | "process";
  restart?: "temporary" | "transient" | "permanent";
  childId?: string;
}

/** An AgentService client for one agentd (host:port). */
export class AgentClient {
  readonly stub: Client<typeof AgentService>;
  /** Tenant of every request; empty means the token's (another tenant's agents: admin tokens only). */
  tenant = "";

  /** `security`: token and TLS (default: `defaultSecurity()`, the MABEAM_TOKEN / MABEAM_TLS_* environment). */
  constructor(readonly endpoint: string, security?: Security) {
    this.stub = createClient(AgentService, transport(endpoint, false, security));
  }

  async spawn(type: string, args: unknown = {}, o: SpawnOptions = {}, opts?: CallOptions): Promise<AgentInfo> {
    const r = await call(this.stub.spawnAgent({ tenant: this.tenant, type, argsJson: JSON.stringify(args ?? {}), name: o.name ?? "",
      supervisor: o.supervisor ?? "", isolation: o.isolation ?? "", restart: o.restart ?? "", childId: o.childId ?? "" }, opts));
    return r.agent as AgentInfo;
  }

  async stop(agent: string, opts?: CallOptions): Promise<void> {
    await call(this.stub.stopAgent({ tenant: this.tenant, agent }, opts));
  }

  async get(agent: string, opts?: CallOptions): Promise<AgentInfo> {
    return (await retrying(() => this.stub.getAgent({ tenant: this.tenant, agent }, opts))).agent as AgentInfo;
  }

  async list(type = "", opts?: CallOptions): Promise<AgentInfo[]> {
    return (await retrying(() => this.stub.listAgents({ tenant: this.tenant, type }, opts))).agents;
  }

  async tree(root = "", opts?: CallOptions): Promise<TreeNode[]> {
    return (await retrying(() => this.stub.supervisionTree({ tenant: this.tenant, root }, opts))).roots;
  }

  async cast(agent: string, msg: unknown, opts?: CallOptions): Promise<void> {
    await call(this.stub.cast({ tenant: this.tenant, agent, messageJson: JSON.stringify(msg) }, opts));
  }

  /** Call an agent; `timeoutMs` is the call's deadline (agentd's default, 5 s, when absent). */
  async call<T = unknown>(agent: string, msg: unknown, opts: CallOptions = {}): Promise<T> {
    const timeoutSeconds = opts.timeoutMs !== undefined ? opts.timeoutMs / 1000 : 0;
    const grpcOpts = opts.timeoutMs !== undefined ? { ...opts, timeoutMs: opts.timeoutMs + 1000 } : opts;
    const r = await call(this.stub.call({ tenant: this.tenant, agent, messageJson: JSON.stringify(msg), timeoutSeconds }, grpcOpts));
    return JSON.parse(r.replyJson || "null") as T;
  }

  async castGroup(group: string, msg: unknown, mode: "all" | "one" = "all", opts?: CallOptions): Promise<number> {
    return (await call(this.stub.castGroup({ tenant: this.tenant, group, messageJson: JSON.stringify(msg), mode }, opts))).localDeliveries;
  }

  async groupMembers(group: string, opts?: CallOptions): Promise<string[]> {
    return (await retrying(() => this.stub.groupMembers({ tenant: this.tenant, group }, opts))).agentIds;
  }
}
