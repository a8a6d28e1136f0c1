import { createGrpcTransport } from "@connectrpc/connect-node";
import type { Transport } from "@connectrpc/connect";
import { connect as tcpConnect } from "node:net";

/** A gRPC (HTTP/2) transport to host:port, plaintext (loopback dev clusters) unless a URL is given. */
export function transport(target: string): Transport {
  const baseUrl = target.includes("://") ? target : `http://${target}`;
  if (baseUrl.startsWith("https:")) return createGrpcTransport({ baseUrl });
  // Plaintext: our own socket with Nagle off, as gRPC's own clients (C-core, grpc-js) set TCP_NODELAY:
  // with Nagle on, a request's small DATA frame can wait for the ACK of its HEADERS frame.
  return createGrpcTransport({
    baseUrl,
    nodeOptions: {
      createConnection: (url: URL) => tcpConnect({ host: url.hostname, port: Number(url.port || 80), noDelay: true }),
    },
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
