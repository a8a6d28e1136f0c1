/**
 * The TypeScript SDK's conformance runner (clients/conformance/README.md):
 *   node dist/conformance/runner.js run --cluster cluster.json --scenarios DIR --run ID [--only NAME ...]
 *   node dist/conformance/runner.js serve --cluster cluster.json --node 1 --name relay-typescript
 */
import { readFileSync, readdirSync } from "node:fs";
import { createConnection } from "node:net";
import { join } from "node:path";
import { parse } from "yaml";
import { AgentClient, CoordinatorClient, ExternalAgent, MabeamError, MeshClient, parseJson, RunClient, type Context } from "../src/index.js";

const LANG = "typescript";
type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any
interface Node { node_id: string; meshd: string; agentd: string; coordinator: string; coordinator_pid: number }
interface Cluster {
  nodes: Node[];
  control?: string;
  /** A secure cluster's credentials (the runner itself gets them from the MABEAM_* environment). */
  security?: { token: string; tls_ca: string; tls_cert: string; tls_key: string };
}
interface Step { op: string; args?: Json; expect?: Json; error?: Json; save?: Record<string, string>; eventually?: number; within?: number }

class Failure extends Error {}

/** Ask the harness to kill or restart a daemon (one JSON line each way; harness.Control). */
async function control(address: string, op: string, args: Json): Promise<Json> {
  const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))];
  const line = await new Promise<string>((resolve, reject) => {
    const socket = createConnection({ host, port }, () => socket.write(JSON.stringify({ op, args }) + "\n"));
    let buffer = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      buffer += chunk;
      if (buffer.includes("\n")) {
        socket.end();
        resolve(buffer.slice(0, buffer.indexOf("\n")));
      }
    });
    socket.on("error", reject);
    socket.on("close", () => reject(new Failure(`${op}: the harness closed the control connection`)));
  });
  const answer = JSON.parse(line);
  if (!answer.ok) throw new Failure(`${op}: ${answer.error}`);
  return answer.result;
}

function substitute(value: Json, vars: Record<string, Json>): Json {
  if (typeof value === "string") {
    const whole = /^\$\{([A-Za-z0-9_]+)\}$/.exec(value);
    if (whole) return vars[whole[1]];
    return value.replace(/\$\{([A-Za-z0-9_]+)\}/g, (_, k) => String(vars[k]));
  }
  if (Array.isArray(value)) return value.map((v) => substitute(v, vars));
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, vars)]));
  return value;
}

function normal(value: Json): Json {
  return JSON.parse(JSON.stringify(value ?? null, (_, v) => (typeof v === "bigint" ? Number(v) : v)));
}

function lookupPath(result: Json, path: string): Json {
  let value = result;
  for (const part of path.split(".")) {
    if (part === "#" && Array.isArray(value)) value = value.length;
    else if (value && typeof value === "object" && part in value) value = value[part];
    else throw new Failure(`result has no ${JSON.stringify(path)}: ${JSON.stringify(result)}`);
  }
  return value;
}

function matches(actual: Json, expected: Json): boolean {
  if (expected && typeof expected === "object" && !Array.isArray(expected)) {
    const keys = Object.keys(expected);
    if (keys.length === 1 && (keys[0] === "lt" || keys[0] === "gt")) {
      return typeof actual === "number" && (keys[0] === "lt" ? actual < expected.lt : actual > expected.gt);
    }
    return !!actual && typeof actual === "object" && !Array.isArray(actual) && Object.keys(actual).length === keys.length
      && keys.every((k) => matches(actual[k], expected[k]));
  }
  if (Array.isArray(expected)) {
    return Array.isArray(actual) && actual.length === expected.length && expected.every((e, i) => matches(actual[i], e));
  }
  return actual === expected;
}

function check(step: Step, result: Json, error: MabeamError | undefined): void {
  const wanted = step.error;
  if (wanted) {
    if (!error) throw new Failure(`expected ${wanted.code}, got a result: ${JSON.stringify(result)}`);
    if (error.code !== wanted.code) throw new Failure(`expected ${wanted.code}, got ${error.code}: ${error.message}`);
    if (wanted.reason !== undefined && error.reason !== wanted.reason) {
      throw new Failure(`expected reason ${wanted.reason}, got ${JSON.stringify(error.reason)}: ${error.message}`);
    }
    if (wanted.field !== undefined && !(wanted.field in error.fieldViolations)) {
      throw new Failure(`expected a violation of ${wanted.field}, got ${JSON.stringify(error.fieldViolations)}`);
    }
    return;
  }
  if (error) throw new Failure(`${error.code} (${error.reason}): ${error.message}`);
  for (const [path, expected] of Object.entries(step.expect ?? {})) {
    const actual = lookupPath(result, path);
    if (!matches(actual, normal(expected))) throw new Failure(`${path}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)} in ${JSON.stringify(result).slice(0, 600)}`);
  }
}

/** The relay behaviour every SDK implements (scenarios 05 and 08). */
class Relay {
  last: Json = { code: "NONE", elapsed_ms: 0 };

  onCall = async (msg: Json, ctx: Context): Promise<Json> => {
    if (msg === "last") return this.last;
    const hops = [...(msg.hops ?? [])];
    const trail = [...(msg.trail ?? []), LANG];
    if (hops.length === 0) return { hops: [], trail };
    const hop = hops.shift();
    const [to, body] = typeof hop === "object" ? [hop.to, hop.msg] : [hop, { hops, trail }];
    const started = Date.now();
    try {
      const reply = await ctx.agent.call(to, body, { ctx });
      this.last = { code: "OK", elapsed_ms: Date.now() - started };
      return reply;
    } catch (error) {
      this.last = { code: error instanceof MabeamError ? error.code : "UNKNOWN", elapsed_ms: Date.now() - started };
      throw error;
    }
  };
}

class Runner {
  meshes = new Map<number, MeshClient>();
  agentds = new Map<number, AgentClient>();
  coordinator: CoordinatorClient;
  agents = new Map<string, { agent: ExternalAgent; release: () => void }>();
  bids: Promise<unknown>[] = [];
  bidStream: ReturnType<CoordinatorClient["bidStream"]> | undefined;
  bidCalls: Promise<string[]> | undefined;
  watch: { versions: number[]; values: Json[]; errors: string[]; changed: () => Promise<void>; stop: AbortController } | undefined;
  bidCallCount = 0;

  constructor(readonly cluster: Cluster, readonly runId: string) {
    this.coordinator = new CoordinatorClient(cluster.nodes.filter((n) => n.coordinator).map((n) => n.coordinator), "", 20000);
  }

  node(a: Json): Node { return this.cluster.nodes[(a.node ?? 1) - 1]; }
  mesh(a: Json): MeshClient {
    const i = a.node ?? 1;
    if (!this.meshes.has(i)) this.meshes.set(i, new MeshClient(this.node(a).meshd));
    return this.meshes.get(i)!;
  }
  agentd(a: Json): AgentClient {
    const i = a.node ?? 1;
    if (!this.agentds.has(i)) this.agentds.set(i, new AgentClient(this.node(a).agentd));
    const client = this.agentds.get(i)!;
    client.tenant = a.tenant ?? ""; // a step's tenant (admin tokens only), else the token's
    return client;
  }

  async close(): Promise<void> {
    for (const { agent, release } of this.agents.values()) { release(); await agent.stop(); }
    await Promise.allSettled(this.bids);
  }

  async op(name: string, a: Json): Promise<Json> {
    switch (name) {
      case "members": {
        const members = await this.mesh(a).members();
        return { count: members.length, node_ids: members.map((m) => m.nodeId).sort() };
      }
      case "leader": {
        const leader = await this.mesh(a).leader(a.role ?? "");
        return { node_id: leader?.nodeId, term: Number(leader?.term ?? 0) };
      }
      case "register_name":
      case "lookup": {
        const e = name === "register_name" ? await this.mesh(a).registerName(a.name, a.agent_id) : await this.mesh(a).lookup(a.name);
        return { name: e.name, node_id: e.target?.nodeId, agent_id: e.target?.agentId };
      }
      case "group_members": {
        const members = await this.mesh(a).groupMembers(a.group);
        return { count: members.length, node_ids: members.map((m) => m.member?.nodeId).sort() };
      }
      case "attach_agent": return this.attach(a);
      case "detach_agent": {
        const entry = this.agents.get(a.name)!;
        this.agents.delete(a.name);
        entry.release();
        await entry.agent.stop();
        return {};
      }
      case "agent_call":
        return { reply: await this.agents.get(a.from)!.agent.call(a.to, a.msg, { timeoutMs: (a.timeout ?? 5) * 1000 }) };
      case "agent_cast": await this.agents.get(a.from)!.agent.cast(a.to, a.msg); return {};
      case "agent_cast_group": await this.agents.get(a.from)!.agent.castGroup(a.group, a.msg, a.mode ?? "all"); return {};
      case "mesh_call": {
        const reply = await this.mesh(a).call(a.to, new Uint8Array([0xc0]), { timeoutMs: (a.timeout ?? 5) * 1000 });
        return { payload_size: reply.payload.length };
      }
      case "spawn": {
        const info = await this.agentd(a).spawn(a.type, a.args ?? {}, { name: a.name ?? "" });
        return { name: info.name, type: info.type, agent_id: info.agentId };
      }
      case "call": return { reply: await this.agentd(a).call(a.agent, a.msg, { timeoutMs: (a.timeout ?? 5) * 1000 }) };
      case "cast": await this.agentd(a).cast(a.agent, a.msg); return {};
      case "stop_agent": await this.agentd(a).stop(a.agent); return {};
      case "create_auction": {
        const instance = await this.coordinator.createAuction(a.kind, a.config);
        return { id: instance.id, state: instance.state };
      }
      case "bid_stream_submit": {
        this.bidStream ??= this.coordinator.bidStream();
        for (let i = a.first; i < a.first + a.count; i++) {
          const p = this.bidStream.submit(a.auction, { type: "bid", bidder: `bidder-${i}`, amount: a.amount_base + i - 1 });
          p.catch(() => undefined);
          this.bids.push(p);
        }
        return {};
      }
      case "bid_stream_wait": {
        const outcomes = await Promise.allSettled(this.bids);
        this.bids = [];
        const refused = outcomes.filter((o) => o.status === "rejected") as PromiseRejectedResult[];
        return { acked: outcomes.length - refused.length, refused: refused.length, errors: refused.slice(0, 3).map((r) => String(r.reason)) };
      }
      case "bid_calls_start":
        return this.startBidCalls(a);
      case "bid_calls_wait": {
        if (!this.bidCalls) throw new Failure("bid_calls_wait before bid_calls_start");
        const errors = await this.bidCalls;
        this.bidCalls = undefined;
        return { acked: this.bidCallCount - errors.length, failed: errors.length, errors: errors.slice(0, 3) };
      }
      case "set_tenant_quota": {
        const q = await this.mesh(a).setTenantQuota({ tenant: a.tenant, maxAgents: BigInt(a.max_agents ?? 0),
          maxInstances: BigInt(a.max_instances ?? 0) });
        return { tenant: q.tenant, max_agents: Number(q.maxAgents), max_instances: Number(q.maxInstances) };
      }
      case "tenant_usage": {
        const u = await this.mesh(a).tenantUsage(a.tenant ?? "");
        return { tenant: u.tenant, max_agents: Number(u.quota?.maxAgents ?? 0n), max_instances: Number(u.quota?.maxInstances ?? 0n),
          usage: Object.fromEntries(u.usage.map((q) => [q.quota, { used: q.used, limit: q.limit, exact: q.exact }])) };
      }
      case "members_with": {
        // Credentials chosen by the step (options, not the environment): the cluster's token (true), none
        // (false) or the given string; TLS with the client certificate or not.
        const given = this.cluster.security;
        const token = a.token === true ? given?.token : typeof a.token === "string" ? a.token : "";
        const tls = a.tls ? { tlsCa: given?.tls_ca, tlsCert: given?.tls_cert, tlsKey: given?.tls_key } : {};
        const mesh = new MeshClient(this.node(a).meshd, "", { token, ...tls });
        return { count: (await mesh.members()).length };
      }
      case "create_auction_with": {
        // A coordinator client built with the step's token (and the cluster's TLS files).
        const given = this.cluster.security;
        const coordinator = new CoordinatorClient(this.cluster.nodes.map((n) => n.coordinator), "", 20000,
          { token: a.token, tlsCa: given?.tls_ca, tlsCert: given?.tls_cert, tlsKey: given?.tls_key });
        const instance = await coordinator.createAuction(a.kind, a.config);
        return { id: instance.id, state: instance.state };
      }
      case "issue_token":
      case "kill_daemon":
      case "restart_daemon":
        return control(this.cluster.control ?? "", name, a);
      case "kill_coordinator_leader": {
        // The harness kills it (it knows the pid of a daemon restarted since this runner started).
        const leader = await this.coordinator.leader();
        await control(this.cluster.control ?? "", "kill_daemon", { node: leader.leaderNodeId, kind: "coordinator" });
        return { node_id: leader.leaderNodeId };
      }
      case "watch_variable_start":
        return this.startWatch(a.name);
      case "watch_variable_wait":
        return this.waitWatch(a.until_version);
      case "close_instance": {
        const instance = await this.coordinator.closeInstance(a.id);
        return { state: instance.state, outcome: parseJson(instance.outcomeJson) ?? null };
      }
      case "create_variable":
      case "set_variable":
      case "get_variable": {
        const v = name === "create_variable" ? await this.coordinator.createVariable(a.name, a.schema, a.initial)
          : name === "set_variable" ? await this.coordinator.setVariable(a.name, a.value, a.expected_version)
          : await this.coordinator.variable(a.name);
        return { version: Number(v.version), value: parseJson(v.valueJson) };
      }
    }
    if (name.startsWith("run_")) return this.runOp(name, a);
    throw new Failure(`unknown op ${name}`);
  }

  /**
   * Unary SubmitBid calls, `concurrency` at a time, each with its own idempotency key, in the background;
   * resolves once `acked_before` were answered (so the next step, a kill, lands in the middle of them).
   */
  async startBidCalls(a: Json): Promise<Json> {
    const errors: string[] = [];
    let answered = 0;
    let next = 1;
    let enough = () => {};
    const enoughReached = new Promise<void>((r) => (enough = r));
    this.bidCallCount = a.count;
    const caller = async () => {
      while (next <= a.count) {
        const i = next++;
        const event = { type: "bid", bidder: `bidder-${i}`, amount: a.amount_base + i - 1 };
        try {
          await this.coordinator.submitBid(a.auction, event, `${a.auction}-${i}`, { timeoutMs: 60_000 });
        } catch (e) {
          errors.push(String(e));
        }
        if (++answered >= (a.acked_before ?? 0)) enough();
      }
    };
    this.bidCalls = Promise.all(Array.from({ length: a.concurrency ?? 1 }, caller)).then(() => {
      enough();
      return errors;
    });
    await enoughReached;
    return {};
  }

  /** Watch a variable in the background from its current version; resolves once that one arrived. */
  async startWatch(name: string): Promise<Json> {
    const stop = new AbortController();
    let wake = () => {};
    let signal = new Promise<void>((r) => (wake = r));
    const watch = { versions: [] as number[], values: [] as Json[], errors: [] as string[], stop,
      changed: () => signal };
    const note = () => {
      wake();
      signal = new Promise<void>((r) => (wake = r));
    };
    this.watch = watch;
    void (async () => {
      try {
        for await (const v of this.coordinator.watchVariable(name, 0, { signal: stop.signal })) {
          watch.versions.push(Number(v.version));
          watch.values.push(parseJson(v.valueJson));
          note();
        }
      } catch (e) {
        if (!stop.signal.aborted) watch.errors.push(String(e));
        note();
      }
    })();
    await Promise.race([watch.changed(), new Promise((r) => setTimeout(r, 30_000).unref())]);
    if (watch.versions.length === 0 && watch.errors.length === 0) throw new Failure("the watch delivered nothing in 30 s");
    return {};
  }

  /** Wait until the watch delivered `untilVersion` (or failed, or 30 s passed), then stop it. */
  async waitWatch(untilVersion: number): Promise<Json> {
    const watch = this.watch;
    if (!watch) throw new Failure("watch_variable_wait before watch_variable_start");
    const deadline = Date.now() + 30_000;
    while (watch.errors.length === 0 && !(watch.versions.length > 0 && watch.versions.at(-1)! >= untilVersion) && Date.now() < deadline) {
      await Promise.race([watch.changed(), new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now())).unref())]);
    }
    watch.stop.abort();
    this.watch = undefined;
    return { versions: watch.versions, values: watch.values, errors: watch.errors.length, error: watch.errors[0] ?? "" };
  }

  /** The durable-run ops against the node's agentd (RunService). */
  async runOp(name: string, a: Json): Promise<Json> {
    const runs = new RunClient(this.node(a).agentd);
    switch (name) {
      case "run_start": {
        const r = await runs.start(a.run_id, a.agent_type, a.input);
        return { created: r.created, status: r.run?.status };
      }
      case "run_append": {
        const r = await runs.append(a.run_id, a.frame_id, a.type, a.payload);
        return { duplicate: r.duplicate, seq: Number(r.seq) };
      }
      case "run_stream": {
        const seqs: number[] = [];
        let lastType = "";
        for await (const event of runs.stream(a.run_id, a.cursor ?? 0, a.follow ?? false)) {
          seqs.push(Number(event.seq));
          lastType = event.type;
        }
        return { count: seqs.length, first_seq: seqs[0] ?? 0, last_seq: seqs.at(-1) ?? 0,
          gap_free: seqs.every((s, i) => s === seqs[0] + i), last_type: lastType };
      }
      case "run_get": {
        const run = await runs.get(a.run_id);
        return { status: run?.status, last_seq: Number(run?.lastSeq ?? 0) };
      }
      case "run_wait_event": {
        for await (const event of runs.stream(a.run_id, 0, true)) {
          if (event.type === a.type) return { seq: Number(event.seq), payload: parseJson(event.payloadJson) };
        }
        throw new Failure(`run ${a.run_id} ended without an event of type ${a.type}`);
      }
      case "run_approve":
      case "run_deny": {
        const decide = name === "run_approve" ? runs.approve.bind(runs) : runs.deny.bind(runs);
        const r = await decide(a.run_id, a.tool_call_id, a.note ?? "");
        return { duplicate: r.duplicate, seq: Number(r.seq) };
      }
    }
    throw new Failure(`unknown op ${name}`);
  }

  async attach(a: Json): Promise<Json> {
    const behaviour = a.behaviour ?? "echo";
    const seen: Json[] = [];
    let release = () => {};
    const released = new Promise<void>((r) => (release = r));
    const relay = new Relay();
    const agent = new ExternalAgent(this.node(a).meshd, {
      names: [a.name], groups: a.groups ?? [], maxPending: a.max_pending ?? 0,
      onCall: async (msg, ctx) => {
        if (behaviour === "relay") return relay.onCall(msg, ctx);
        if (behaviour === "collect" && msg === "seen") return [...seen];
        return msg;
      },
      onCast: async (msg) => {
        seen.push(msg);
        if (behaviour === "block") await released;
      },
    });
    await agent.start(15000);
    this.agents.set(a.name, { agent, release });
    return { node_id: agent.ref?.nodeId };
  }

  async step(step: Step, vars: Record<string, Json>): Promise<void> {
    const args = substitute(step.args ?? {}, vars);
    const resolved = { ...step, expect: substitute(step.expect, vars), error: substitute(step.error, vars) };
    const started = Date.now();
    const deadline = started + (step.eventually ?? 0) * 1000;
    let result: Json;
    for (;;) {
      let error: MabeamError | undefined;
      result = undefined;
      try {
        result = normal(await this.op(step.op, args));
      } catch (caught) {
        if (caught instanceof Failure) throw caught;
        error = caught instanceof MabeamError ? caught : new MabeamError("UNKNOWN", String(caught));
      }
      try {
        check(resolved, result, error);
        break;
      } catch (failure) {
        if (Date.now() >= deadline) throw failure;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    if (step.within !== undefined && (Date.now() - started) / 1000 > step.within) {
      throw new Failure(`took ${(Date.now() - started) / 1000}s, more than ${step.within}s`);
    }
    for (const [v, path] of Object.entries(step.save ?? {})) vars[v] = lookupPath(result, path);
  }

  async scenario(s: { name: string; steps: Step[] }): Promise<void> {
    const vars: Record<string, Json> = { run: `${this.runId}-${s.name}`, lang: LANG };
    for (const [i, step] of s.steps.entries()) {
      try {
        await this.step(step, vars);
      } catch (failure) {
        throw new Failure(`step ${i + 1} (${step.op}): ${(failure as Error).message}`);
      }
    }
  }
}

function flag(args: string[], name: string, fallback = ""): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
}

async function run(args: string[]): Promise<number> {
  const cluster = JSON.parse(readFileSync(flag(args, "cluster"), "utf8")) as Cluster;
  const dir = flag(args, "scenarios");
  const runId = flag(args, "run", `ts${process.pid}`);
  const onlyAt = args.indexOf("--only");
  const only = onlyAt >= 0 ? args.slice(onlyAt + 1).filter((a) => !a.startsWith("--")) : [];
  let passed = 0, failed = 0;
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".yaml")).sort()) {
    const scenario = parse(readFileSync(join(dir, file), "utf8"));
    if (only.length && !only.includes(scenario.name)) continue;
    const runner = new Runner(cluster, runId);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([runner.scenario(scenario),
        new Promise((_, reject) => { timer = setTimeout(() => reject(new Failure("timed out after 90s")), 90000); })]);
      console.log(`PASS ${scenario.name}`);
      passed++;
    } catch (failure) {
      console.log(`FAIL ${scenario.name}: ${(failure as Error).message}`);
      failed++;
    } finally {
      clearTimeout(timer);
      await runner.close();
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

async function serve(args: string[]): Promise<number> {
  const cluster = JSON.parse(readFileSync(flag(args, "cluster"), "utf8")) as Cluster;
  const relay = new Relay();
  const agent = new ExternalAgent(cluster.nodes[Number(flag(args, "node", "1")) - 1].meshd,
    { names: [flag(args, "name", "relay-typescript")], onCall: relay.onCall });
  await agent.start(30000);
  console.log("ready");
  process.stdin.resume();
  await new Promise((r) => process.stdin.on("end", r));
  await agent.stop();
  return 0;
}

/** Sequential call p50 and the rate of --calls calls with --concurrency in flight, through agentd (python -m bench sdks). */
async function bench(args: string[]): Promise<number> {
  const client = new AgentClient(flag(args, "agentd"));
  const target = flag(args, "target");
  const calls = Number(flag(args, "calls", "1000"));
  const concurrency = Number(flag(args, "concurrency", "16"));
  const call = () => client.call(target, "ping", { timeoutMs: 10000 });
  for (let i = 0; i < 50; i++) await call();
  const latencies: number[] = [];
  for (let i = 0; i < calls; i++) {
    const start = process.hrtime.bigint();
    await call();
    latencies.push(Number(process.hrtime.bigint() - start) / 1000);
  }
  latencies.sort((a, b) => a - b);
  let next = 0, failed = 0;
  const start = process.hrtime.bigint();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next++ < calls) await call().catch(() => failed++);
  }));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(JSON.stringify({ p50_us: Math.round(latencies[Math.floor(calls / 2)]), calls_per_s: calls / seconds, failed }));
  return 0;
}

const [command, ...rest] = process.argv.slice(2);
const code = command === "run" ? await run(rest) : command === "serve" ? await serve(rest)
  : command === "bench" ? await bench(rest) : 2;
process.exit(code);
