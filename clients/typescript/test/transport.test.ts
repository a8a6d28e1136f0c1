// The gRPC transport (src/grpc.ts) against an in-process gRPC server (connect-node's, over HTTP/2):
// unary results and rich errors, deadlines, cancellation both ways, lost connections, and streams with
// flow control.
import { test } from "node:test";
import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo, Socket } from "node:net";
import { Code, ConnectError, createClient, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { MeshService } from "../src/gen/mabeam/v1/mesh_pb.js";
import { MabeamError, MeshClient, translate } from "../src/index.js";
import { transport } from "../src/transport.js";

/** A MeshService on 127.0.0.1:0 with the given methods; `sockets` lets a test cut connections. */
async function serve(impl: Partial<ServiceImpl<typeof MeshService>>) {
  const routes = (router: ConnectRouter) => router.service(MeshService, impl);
  const server = http2.createServer(connectNodeAdapter({ routes, grpc: true, connect: false, grpcWeb: false }));
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  const sockets = new Set<Socket>();
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    address,
    sockets,
    async close() {
      for (const session of sessions) session.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Resolves when `signal` aborts (a server handler waiting for its call to be cancelled). */
function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => signal.aborted ? resolve() : signal.addEventListener("abort", () => resolve()));
}

async function rejects(promise: Promise<unknown>): Promise<MabeamError> {
  try {
    await promise;
  } catch (error) {
    return translate(error);
  }
  assert.fail("the call did not fail");
}

test("unary calls carry results and rich errors", async () => {
  const server = await serve({
    ping: () => ({ etcdConnected: true, serverTimeUnixMs: 42n }),
    lookup: (req) => {
      throw new ConnectError(`no name ${req.name}`, Code.NotFound, undefined,
        [{ desc: ErrorInfoSchema, value: { reason: "NAME_NOT_FOUND", domain: "mabeam.io", metadata: { name: req.name } } }]);
    },
  });
  try {
    const mesh = new MeshClient(server.address);
    const pong = await mesh.ping();
    assert.equal(pong.serverTimeUnixMs, 42n);
    assert.equal(pong.etcdConnected, true);
    const error = await rejects(mesh.lookup("planner"));
    assert.equal(error.code, "NOT_FOUND");
    assert.equal(error.reason, "NAME_NOT_FOUND");
    assert.equal(error.metadata.name, "planner");
    assert.equal(error.message, "no name planner");
  } finally {
    await server.close();
  }
});

test("a deadline ends the call with DEADLINE_EXCEEDED and the server sees it go", async () => {
  let serverSawCancel = false;
  const server = await serve({
    ping: async (_req, ctx) => {
      await aborted(ctx.signal);
      serverSawCancel = true;
      return {};
    },
  });
  try {
    const stub = createClient(MeshService, transport(server.address));
    const started = Date.now();
    const error = await rejects(stub.ping({}, { timeoutMs: 300 }));
    assert.equal(error.code, "DEADLINE_EXCEEDED");
    assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
    for (const deadline = Date.now() + 5000; !serverSawCancel && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 10));
    assert.ok(serverSawCancel);
  } finally {
    await server.close();
  }
});

test("an AbortSignal cancels the call (CANCELLED) and the server sees it", async () => {
  let serverSawCancel!: () => void;
  const cancelled = new Promise<void>((resolve) => { serverSawCancel = resolve; });
  let started!: () => void;
  const running = new Promise<void>((resolve) => { started = resolve; });
  const server = await serve({
    ping: async (_req, ctx) => {
      started();
      await aborted(ctx.signal);
      serverSawCancel();
      return {};
    },
  });
  try {
    const stub = createClient(MeshService, transport(server.address));
    const abort = new AbortController();
    const call = rejects(stub.ping({}, { signal: abort.signal }));
    await running;
    abort.abort();
    assert.equal((await call).code, "CANCELLED");
    await cancelled;
    const already = await rejects(stub.ping({}, { signal: AbortSignal.abort() }));
    assert.equal(already.code, "CANCELLED");
  } finally {
    await server.close();
  }
});

test("a lost or refused connection is UNAVAILABLE, and the next call reconnects", async () => {
  let started!: () => void;
  const running = new Promise<void>((resolve) => { started = resolve; });
  let calls = 0;
  const server = await serve({
    ping: async (_req, ctx) => {
      if (++calls === 1) {
        started();
        await aborted(ctx.signal);
      }
      return { serverTimeUnixMs: BigInt(calls) };
    },
  });
  try {
    const stub = createClient(MeshService, transport(server.address));
    const call = rejects(stub.ping({}));
    await running;
    for (const socket of server.sockets) socket.destroy(); // the connection goes, as when the server is killed
    assert.equal((await call).code, "UNAVAILABLE");
    assert.equal((await stub.ping({})).serverTimeUnixMs, 2n);
  } finally {
    await server.close();
  }
  const refused = await rejects(createClient(MeshService, transport(server.address)).ping({}));
  assert.equal(refused.code, "UNAVAILABLE");
});

test("bidi streams carry many messages in order under flow control", async () => {
  const server = await serve({
    async *attachAgent(requests) {
      for await (const request of requests) {
        if (request.body.case === "outbound") {
          const { requestId, payload } = request.body.value;
          yield { body: { case: "result", value: { requestId, payload } } };
        }
      }
    },
  });
  try {
    const stub = createClient(MeshService, transport(server.address));
    const count = 2000;
    const payload = new Uint8Array(16 * 1024).fill(7); // 32 MiB each way: more than the HTTP/2 windows
    async function* requests() {
      for (let i = 1; i <= count; i++) yield { body: { case: "outbound" as const, value: { requestId: BigInt(i), payload } } };
    }
    let seen = 0;
    for await (const response of stub.attachAgent(requests())) {
      assert.equal(response.body.case, "result");
      if (response.body.case !== "result") break;
      assert.equal(response.body.value.requestId, BigInt(++seen));
      assert.equal(response.body.value.payload.length, payload.length);
      if (seen % 500 === 0) await new Promise((r) => setTimeout(r, 20)); // a slow reader: the server must wait
    }
    assert.equal(seen, count);
  } finally {
    await server.close();
  }
});

test("a consumer that stops reading a server stream cancels it on the server", async () => {
  let serverSawCancel!: () => void;
  const cancelled = new Promise<void>((resolve) => { serverSawCancel = resolve; });
  const server = await serve({
    async *subscribe(_req, ctx) {
      ctx.signal.addEventListener("abort", () => serverSawCancel());
      for (let i = 0; ; i++) {
        yield { payload: new Uint8Array([i % 256]) };
        await new Promise((r) => setTimeout(r, 5));
      }
    },
  });
  try {
    const mesh = new MeshClient(server.address);
    let got = 0;
    for await (const _ of mesh.subscribe(["a"])) {
      if (++got === 3) break;
    }
    await cancelled;
  } finally {
    await server.close();
  }
});

test("a server stream's error status reaches the iterating caller", async () => {
  const server = await serve({
    async *subscribe() {
      yield { payload: new Uint8Array([1]) };
      throw new ConnectError("name taken", Code.AlreadyExists, undefined,
        [{ desc: ErrorInfoSchema, value: { reason: "NAME_TAKEN", domain: "mabeam.io" } }]);
    },
  });
  try {
    const mesh = new MeshClient(server.address);
    const got: number[] = [];
    const error = await rejects((async () => {
      for await (const item of mesh.subscribe(["a"])) got.push(item.payload[0]);
    })());
    assert.deepEqual(got, [1]);
    assert.equal(error.code, "ALREADY_EXISTS");
    assert.equal(error.reason, "NAME_TAKEN");
  } finally {
    await server.close();
  }
});
