/**
 * Credentials for a cluster with security on (docs/security.md, "What clients send"): a bearer token in
 * the `authorization` metadata of every call, and TLS trusting the cluster's CA with a client certificate
 * (mTLS). The same settings and environment variables as the Python SDK's `mabeam_client.security`:
 *
 *     MABEAM_TOKEN=<jwt>                          # or MABEAM_TOKEN_FILE=/path/to/token
 *     MABEAM_TLS_CA=/etc/mabeam/tls/ca.crt        # trust this CA for the servers' certificates...
 *     MABEAM_TLS_CERT=/etc/mabeam/tls/client.crt  # ...and present this certificate and key (mTLS)
 *     MABEAM_TLS_KEY=/etc/mabeam/tls/client.key
 *     MABEAM_TLS_SERVER_NAME=node-1               # optional: the name to verify instead of the address's host
 *
 * Every client takes a `Security` as its last constructor argument (`ExternalAgent`: `options.security`);
 * without one it uses `defaultSecurity()`, read once from the environment.
 */
import { readFileSync } from "node:fs";
import { MabeamError } from "./errors.js";

/** A token and/or TLS files (paths); absent or empty fields are off. */
export interface Security {
  token?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  serverName?: string;
}

/** Throws INVALID_ARGUMENT for settings that cannot work (a certificate without its key, or without a CA). */
export function checkSecurity(s: Security): Security {
  if (Boolean(s.tlsCert) !== Boolean(s.tlsKey)) {
    throw new MabeamError("INVALID_ARGUMENT", "a client certificate needs its key (tlsCert and tlsKey together)");
  }
  if (s.tlsCert && !s.tlsCa) {
    throw new MabeamError("INVALID_ARGUMENT", "a client certificate is sent over TLS: give tlsCa (the servers' CA) too");
  }
  return s;
}

/** Read MABEAM_TOKEN (or MABEAM_TOKEN_FILE) and MABEAM_TLS_{CA,CERT,KEY,SERVER_NAME}. */
export function securityFromEnv(env: NodeJS.ProcessEnv = process.env): Security {
  let token = (env.MABEAM_TOKEN ?? "").trim();
  if (!token && env.MABEAM_TOKEN_FILE) token = readFileSync(env.MABEAM_TOKEN_FILE, "utf8").trim();
  return checkSecurity({ token, tlsCa: env.MABEAM_TLS_CA ?? "", tlsCert: env.MABEAM_TLS_CERT ?? "",
    tlsKey: env.MABEAM_TLS_KEY ?? "", serverName: env.MABEAM_TLS_SERVER_NAME ?? "" });
}

let fallback: Security | undefined;

/** What clients built without a Security use: set by setDefaultSecurity, else the environment (read once). */
export function defaultSecurity(): Security {
  return (fallback ??= securityFromEnv());
}

/** Make `security` the default of clients built from now on (undefined: read the environment again). */
export function setDefaultSecurity(security: Security | undefined): void {
  fallback = security === undefined ? undefined : checkSecurity(security);
}

/** The TLS options of node:http2 / node:tls for these settings (undefined: plaintext). */
export function tlsOptions(s: Security): { ca: Buffer; cert?: Buffer; key?: Buffer; servername?: string } | undefined {
  if (!s.tlsCa) return undefined;
  return {
    ca: readFileSync(s.tlsCa),
    ...(s.tlsCert ? { cert: readFileSync(s.tlsCert), key: readFileSync(s.tlsKey!) } : {}),
    ...(s.serverName ? { servername: s.serverName } : {}),
  };
}
