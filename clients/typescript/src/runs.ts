/** RunService: durable runs — start, append input frames, stream events with a resume cursor, cancel, inspect. */
import { createClient, type Client } from "@connectrpc/connect";
import { RunService, type Run, type RunEvent, type ToolCallDecisionResponse } from "./gen/mabeam/v1/run_pb.js";
import { translate } from "./errors.js";
import { retrying } from "./mesh.js";
import type { Security } from "./security.js";
import { transport, type CallOptions } from "./transport.js";

export class RunClient {
  readonly stub: Client<typeof RunService>;

  /** `resumeForMs`: how long stream() keeps reconnecting without receiving an event. */
  /** `security`: token and TLS (default: `defaultSecurity()`, the MABEAM_TOKEN / MABEAM_TLS_* environment). */
  constructor(readonly endpoint: string, readonly tenant = "", public resumeForMs = 15000, security?: Security) {
    this.stub = createClient(RunService, transport(endpoint, false, security));
  }

  /** Start a run (idempotent by runId: a repeat returns the run with created=false). */
  async start(runId: string, agentType: string, input: unknown, labels: Record<string, string> = {}, opts?: CallOptions) {
    return retrying(() => this.stub.startRun({ runId, tenant: this.tenant, agentType, inputJson: JSON.stringify(input), labels }, opts));
  }

  /** Append an input frame, idempotent by frameId. */
  async append(runId: string, frameId: string, type: string, payload: unknown, opts?: CallOptions) {
    return retrying(() => this.stub.appendFrame({ runId, frameId, type, payloadJson: JSON.stringify(payload) }, opts));
  }

  /**
   * Approve a tool call waiting for a human (a "tool.approval_requested" event of the run names its
   * `tool_call_id`); `note` says why, for the log and the model. The decision is a durable input of the
   * run: the same decision again resolves with `duplicate: true` and the first seq (so it is retried on
   * UNAVAILABLE). Rejects with a MabeamError: NOT_FOUND/APPROVAL_NOT_FOUND (the run never asked about that
   * call), FAILED_PRECONDITION with APPROVAL_DECIDED (denied already: a decision is final),
   * APPROVAL_EXPIRED (its deadline passed first) or RUN_TERMINAL — test with `error.is(code, reason)`.
   */
  async approve(runId: string, toolCallId: string, note = "", opts?: CallOptions): Promise<ToolCallDecisionResponse> {
    return retrying(() => this.stub.approveToolCall({ runId, toolCallId, note }, opts));
  }

  /** Deny a tool call waiting for a human (the model is told, and may try something else); as approve(). */
  async deny(runId: string, toolCallId: string, note = "", opts?: CallOptions): Promise<ToolCallDecisionResponse> {
    return retrying(() => this.stub.denyToolCall({ runId, toolCallId, note }, opts));
  }

  async cancel(runId: string, reason = "", opts?: CallOptions) {
    return retrying(() => this.stub.cancelRun({ runId, reason }, opts));
  }

  async get(runId: string, opts?: CallOptions): Promise<Run | undefined> {
    return (await retrying(() => this.stub.getRun({ runId }, opts))).run;
  }

  async list(filter: { agentType?: string; status?: string; pageSize?: number; pageToken?: string } = {}, opts?: CallOptions) {
    return retrying(() => this.stub.listRuns({ tenant: this.tenant, agentType: filter.agentType ?? "", status: filter.status ?? "",
      pageSize: filter.pageSize ?? 0, pageToken: filter.pageToken ?? "" }, opts));
  }

  /**
   * A run's events after `cursor` (0: from the beginning), gap-free and in seq order; with `follow`, new
   * ones as they come. A broken stream (UNAVAILABLE) is reopened with the last seq yielded as the cursor.
   */
  async *stream(runId: string, cursor = 0, follow = false, opts: CallOptions = {}): AsyncGenerator<RunEvent> {
    let last = BigInt(cursor);
    let quietSince = Date.now();
    let delay = 50;
    for (;;) {
      try {
        for await (const event of this.stub.streamRun({ runId, cursor: last, follow }, opts)) {
          if (event.seq <= last) continue; // a resend after reconnecting: already yielded
          last = event.seq;
          quietSince = Date.now();
          delay = 50;
          yield event;
        }
        return;
      } catch (raw) {
        const error = translate(raw);
        if (error.code !== "UNAVAILABLE" || opts.signal?.aborted || Date.now() - quietSince > this.resumeForMs) throw error;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 1000);
      }
    }
  }
}
