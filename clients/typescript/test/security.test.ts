// Token and mTLS (src/security.ts) against an in-process gRPC server over TLS that requires a client
// certificate from its CA; certificates made with the openssl command line in a temp dir.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TLSSocket } from "node:tls";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { MeshService } from "../src/gen/mabeam/v1/mesh_pb.js";
import { MabeamError, MeshClient, securityFromEnv } from "../src/index.js";

/** A CA, a server certificate for 127.0.0.1 and a client certificate ("client"), as PEM files in `dir`. */
function pki(dir: string): void {
  const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
    "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.crt");
  for (const [name, ext] of [["server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"],
    ["client", "extendedKeyUsage=clientAuth"]]) {
    writeFileSync(join(dir, `${name}.ext`), ext + "\n");
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", `/CN=${name}`,
      "-keyout", `${name}.key`, "-out", `${name}.csr`);
    openssl("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
      "-extfile", `${name}.ext`, "-out", `${name}.crt`);
  }
}

test("mutual TLS with a bearer token; no client certificate is UNAVAILABLE; the environment's settings", async () => {
  const dir = mkdtempSync(join(tmpdir(), "mabeam-ts-tls-"));
  pki(dir);
  // Ping answers with what the server saw: the authorization header (node id) and the client certificate's name.
  const routes = (router: ConnectRouter) => router.service(MeshService, {
    ping: (_req, ctx) => ({ node: { nodeId: ctx.requestHeader.get("authorization") ?? "", grpcAddress: "" } }),
  });
  const server = http2.createSecureServer({ key: readFileSync(join(dir, "server.key")), cert: readFileSync(join(dir, "server.crt")),
    ca: readFileSync(join(dir, "ca.crt")), requestCert: true, rejectUnauthorized: true },
  connectNodeAdapter({ routes, grpc: true, connect: false, grpcWeb: false }));
  const peers: string[] = [];
  server.on("secureConnection", (socket: TLSSocket) => peers.push(String(socket.getPeerCertificate().subject?.CN ?? "")));
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => sessions.add(session));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const security = { token: "tok-1", tlsCa: join(dir, "ca.crt"), tlsCert: join(dir, "client.crt"), tlsKey: join(dir, "client.key") };
    const mesh = new MeshClient(address, "", security);
    const pong = await mesh.ping({ timeoutMs: 10_000 });
    assert.equal(pong.node?.nodeId, "Bearer tok-1");
    assert.deepEqual(peers, ["client"]);

    const bare = new MeshClient(address, "", { token: "tok-1", tlsCa: security.tlsCa });
    const refused = await bare.ping({ timeoutMs: 10_000 }).then(() => undefined, (e: unknown) => e);
    assert.ok(refused instanceof MabeamError && refused.code === "UNAVAILABLE", `${String(refused)} ${(refused as MabeamError)?.code}`);

    writeFileSync(join(dir, "token"), "tok-file\n");
    const fromEnv = securityFromEnv({ MABEAM_TOKEN_FILE: join(dir, "token"), MABEAM_TLS_CA: security.tlsCa,
      MABEAM_TLS_CERT: security.tlsCert, MABEAM_TLS_KEY: security.tlsKey });
    const viaEnv = new MeshClient(address, "", fromEnv);
    assert.equal((await viaEnv.ping({ timeoutMs: 10_000 })).node?.nodeId, "Bearer tok-file");
    assert.throws(() => securityFromEnv({ MABEAM_TLS_CERT: "client.crt" }),
      (e: unknown) => e instanceof MabeamError && e.code === "INVALID_ARGUMENT");
  } finally {
    for (const session of sessions) session.destroy();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  }
});
