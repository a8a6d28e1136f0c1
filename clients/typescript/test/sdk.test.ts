import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { decode, encode } from "@msgpack/msgpack";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { EnvelopeSchema, MessageKind } from "../src/gen/mabeam/v1/dataplane_pb.js";
import { ExternalAgent, MabeamError, translate } from "../src/index.js";

test("translate reads ErrorInfo, RetryInfo and BadRequest", () => {
  const error = new ConnectError("standby", Code.Unavailable, undefined, [
    { desc: ErrorInfoSchema, value: { reason: "WRONG_NODE", domain: "mabeam.io", metadata: { leader: "127.0.0.1:7118" } } },
    { desc: RetryInfoSchema, value: { retryDelay: { seconds: 0n, nanos: 250_000_000 } } },
    { desc: BadRequestSchema, value: { fieldViolations: [{ field: "name", description: "bad" }] } },
  ]);
  const got = translate(error);
  assert.ok(got instanceof MabeamError);
  assert.equal(got.code, "UNAVAILABLE");
  assert.equal(got.reason, "WRONG_NODE");
  assert.equal(got.metadata.leader, "127.0.0.1:7118");
  assert.equal(got.retryAfter, 0.25);
  assert.deepEqual(got.fieldViolations, { name: "bad" });
  assert.equal(got.message, "standby");
});

test("dispatch follows agentd's payload convention", async () => {
  let deadline: number | undefined;
  const agent = new ExternalAgent("127.0.0.1:1", {
    onCall: (msg, ctx) => {
      deadline = ctx.deadline;
      if ((msg as { fail?: boolean }).fail) throw new MabeamError("NOT_FOUND", "nope");
      return { got: (msg as { x: number }).x };
    },
  });
  const envelope = create(EnvelopeSchema, { kind: MessageKind.CALL, deadlineUnixMs: BigInt(Date.now() + 1000) });
  const ok = decode(await agent.dispatch({ payload: encode({ to: "me", msg: { x: 7 } }) }, envelope));
  assert.deepEqual(ok, { ok: { got: 7 } });
  assert.ok(deadline !== undefined && deadline > Date.now());
  const failed = decode(await agent.dispatch({ payload: encode({ to: "me", msg: { fail: true } }) }, envelope));
  assert.deepEqual(failed, { error: { code: "NOT_FOUND", message: "nope" } });
});
