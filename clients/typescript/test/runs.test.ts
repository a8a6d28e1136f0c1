import { test } from "node:test";
import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { RunService } from "../src/gen/mabeam/v1/run_pb.js";
import { RunClient } from "../src/index.js";

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
