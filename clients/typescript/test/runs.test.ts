import { test } from "node:test";
import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { RunService } from "../src/gen/mabeam/v1/run_pb.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { ErrorReason } from "../src/gen/mabeam/v1/common_pb.js";
import { MabeamError, RunClient } from "../src/index.js";

test("stream resumes from the last seq after UNAVAILABLE", async () => {
  const cursors: bigint[] = [];
  const routes = (router: ConnectRouter) => router.service(RunService, {
    async *streamRun(req) {
      cursors.push(req.cursor);
      for (let seq = req.cursor + 1n; seq <= 5n; seq++) {
        if (cursors.length === 1 && seq === 4n) throw new ConnectError("node going away", Code.Unavailable);
        yield { runId: req.runId, seq };
      }
    },
  });
  const server = http2.createServer(connectNodeAdapter({ routes, grpc: true }));
  const sessions: http2.ServerHttp2Session[] = [];
  server.on("session", (session) => sessions.push(session));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const runs = new RunClient(`127.0.0.1:${(server.address() as AddressInfo).port}`);
    const seqs: bigint[] = [];
    for await (const event of runs.stream("run-1")) seqs.push(event.seq);
    assert.deepEqual(seqs, [1n, 2n, 3n, 4n, 5n]);
    assert.deepEqual(cursors, [0n, 3n]);
  } finally {
    for (const session of sessions) session.destroy(); // the client's pooled session would keep the test alive
    server.close();
  }
});

test("approve and deny answer replays and typed errors", async () => {
  let decided = "";
  const refuse = (code: Code, reason: string, message: string) =>
    new ConnectError(message, code, undefined, [{ desc: ErrorInfoSchema, value: { reason, domain: "mabeam.io" } }]);
  const decide = (toolCallId: string, decision: string) => {
    if (toolCallId !== "tc-1") throw refuse(Code.NotFound, "APPROVAL_NOT_FOUND", `run-1 never asked about ${toolCallId}`);
    if (!decided) {
      decided = decision;
      return { seq: 7n, duplicate: false };
    }
    if (decided === decision) return { seq: 7n, duplicate: true };
    throw refuse(Code.FailedPrecondition, "APPROVAL_DECIDED", `tc-1 was ${decided}`);
  };
  const routes = (router: ConnectRouter) => router.service(RunService, {
    approveToolCall: (req) => decide(req.toolCallId, "approved"),
    denyToolCall: (req) => decide(req.toolCallId, "denied"),
  });
  const server = http2.createServer(connectNodeAdapter({ routes, grpc: true }));
  const sessions: http2.ServerHttp2Session[] = [];
  server.on("session", (session) => sessions.push(session));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const runs = new RunClient(`127.0.0.1:${(server.address() as AddressInfo).port}`);
    const first = await runs.approve("run-1", "tc-1", "ok");
    assert.deepEqual([first.duplicate, first.seq], [false, 7n]);
    const again = await runs.approve("run-1", "tc-1", "ok");
    assert.deepEqual([again.duplicate, again.seq], [true, 7n]);
    const refused = await runs.deny("run-1", "tc-1", "no").then(() => undefined, (e: unknown) => e);
    assert.ok(refused instanceof MabeamError);
    assert.ok(refused.is("FAILED_PRECONDITION", "APPROVAL_DECIDED") && !refused.is("FAILED_PRECONDITION", "APPROVAL_EXPIRED"));
    assert.equal(refused.reasonCode, ErrorReason.APPROVAL_DECIDED);
    const unknown = await runs.approve("run-1", "tc-9").then(() => undefined, (e: unknown) => e);
    assert.ok(unknown instanceof MabeamError && unknown.is("NOT_FOUND", "APPROVAL_NOT_FOUND"));
  } finally {
    for (const session of sessions) session.destroy();
    server.close();
  }
});
