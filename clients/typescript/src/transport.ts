import type { Transport } from "@connectrpc/connect";
import { grpcTransport } from "./grpc.js";
import { checkSecurity, defaultSecurity, tlsOptions, type Security } from "./security.js";

/**
 * A gRPC (HTTP/2) transport to host:port (`src/grpc.ts`: a lean transport over node:http2; see there why
 * not connect-node's): TLS when `security` names a CA, else plaintext (loopback dev clusters); its token
 * goes with every call as `authorization: Bearer <token>` (src/security.ts).
 * `keepalive`: ping every 2 s and drop the connection when a ping goes unanswered for 2 s, so a stream
 * on a server that went silent (host cut off, process paused) breaks instead of waiting forever (the
 * coordinator clients use it; the coordinator accepts pings this often).
 */
export function transport(target: string, keepalive = false, security: Security = defaultSecurity()): Transport {
  checkSecurity(security);
  const tls = tlsOptions(security);
  const baseUrl = target.includes("://") ? target : `${tls ? "https" : "http"}://${target}`;
  return grpcTransport(baseUrl, {
    ...(keepalive ? { ping: { pingIntervalMs: 2000, pingTimeoutMs: 2000, pingIdleConnection: true } } : {}),
    ...(tls ? { tls } : {}),
    ...(security.token ? { headers: { authorization: `Bearer ${security.token}` } } : {}),
  });
}

/** Options every call accepts: a deadline (ms from now) and an AbortSignal that cancels the call. */
export interface CallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** An async queue: push from anywhere, consume with for await (the input side of a bidi stream). */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiters: ((r: IteratorResult<T>) => void)[] = [];
  private closed = false;

  push(item: T): void {
    if (this.closed) return;
    const waiter = this.waiters.shift();
    if (waiter) waiter({ value: item, done: false });
    else this.items.push(item);
  }

  close(): void {
    this.closed = true;
    for (const waiter of this.waiters.splice(0)) waiter({ value: undefined as never, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        const item = this.items.shift();
        if (item !== undefined) return Promise.resolve({ value: item, done: false });
        if (this.closed) return Promise.resolve({ value: undefined as never, done: true });
        return new Promise((resolve) => this.waiters.push(resolve));
      },
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined as never, done: true });
      },
      throw: (error?: unknown) => {
        this.close();
        return Promise.reject(error);
      },
    };
  }
}
