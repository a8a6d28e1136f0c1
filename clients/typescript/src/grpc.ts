/**
 * A lean gRPC client transport over `node:http2`, implementing connect's `Transport` so the generated
 * service clients (`createClient`) work unchanged.
 *
 * Why not connect-node's own gRPC transport: it costs 1.1–1.6 ms of CPU per unary call (measured with
 * `process.cpuUsage()` over 500 calls to agentd's echo agent; a bare `node:http2` call with the same
 * bytes costs 0.2–0.5 ms). Its request and response bodies run through chains of async generators
 * compiled down to ES2017 helpers (a promise per step, ~0.3 ms of garbage collection per call), written
 * for every protocol it speaks (Connect, gRPC, gRPC-web, compression, interceptors). On a busy machine
 * a call that needs more CPU than one scheduler slice is preempted and waits a round of the run queue
 * each time: that, not the wire, made the TypeScript SDK's round trip ten times the other SDKs'
 * (docs/sdks.md, "Performance"). Here a unary call is one stream: HEADERS, then the request's one DATA
 * frame with END_STREAM, and the response collected in plain event handlers.
 *
 * What stays connect's: the session (`Http2SessionManager`: connecting, reconnecting, keepalive
 * PINGs, GOAWAY), the status and error-details decoding (`findTrailerError`: grpc-status,
 * grpc-message, grpc-status-details-bin into a `ConnectError`) and the message schemas (protobuf-es).
 * What is here: gRPC's length-prefixed framing, the deadline (`grpc-timeout` and a local timer),
 * cancellation (an RST_STREAM CANCEL), flow control for streams, and the mapping of transport failures
 * to gRPC codes as gRPC's own clients map them (a lost connection is UNAVAILABLE).
 */
import type * as http2 from "node:http2";
import { connect as tcpConnect } from "node:net";
import { create, fromBinary, toBinary, type DescMessage, type DescMethodStreaming, type DescMethodUnary,
  type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type StreamResponse, type Transport, type UnaryResponse } from "@connectrpc/connect";
import { codeFromHttpStatus, findTrailerError } from "@connectrpc/connect/protocol-grpc";
import { Http2SessionManager, type Http2SessionOptions } from "@connectrpc/connect-node";

/** HTTP/2 error codes (RFC 9113 §7) the transport reads or sends. */
const NO_ERROR = 0x0;
const REFUSED_STREAM = 0x7;
const CANCEL = 0x8;
const ENHANCE_YOUR_CALM = 0xb;

/** Node errors that mean the connection (not the call) failed: the call may be retried elsewhere. */
const CONNECTION_LOST = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "ENOTFOUND", "EAI_AGAIN",
  "EHOSTUNREACH", "ENETUNREACH", "ECONNABORTED", "ERR_HTTP2_GOAWAY_SESSION", "ERR_HTTP2_INVALID_SESSION",
  "ERR_HTTP2_SESSION_ERROR", "ERR_HTTP2_STREAM_CANCEL", "ERR_STREAM_DESTROYED", "ERR_HTTP2_PING_CANCEL"]);

/** Node's certificate verification failures (tls.connect), e.g. a server certificate from another CA. */
const TLS_VERIFY = new Set(["UNABLE_TO_VERIFY_LEAF_SIGNATURE", "SELF_SIGNED_CERT_IN_CHAIN", "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", "CERT_HAS_EXPIRED", "CERT_NOT_YET_VALID", "CERT_UNTRUSTED", "CERT_SIGNATURE_FAILURE"]);

/** Streams pause reading while this many decoded messages wait for the consumer (HTTP/2 flow control). */
const HIGH_WATER = 64;

export interface GrpcTransportOptions {
  /** PING the server this often and drop the connection when one goes unanswered (connect-node's options). */
  ping?: Http2SessionOptions;
  /** For https: the CA to trust, the client certificate and key (mTLS), the server name to verify. */
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer; servername?: string };
  /** Headers sent with every call (the bearer token: `authorization`). */
  headers?: Record<string, string>;
}

/** A gRPC transport to `baseUrl` (`http://host:port`, or https). */
export function grpcTransport(baseUrl: string, options: GrpcTransportOptions = {}): Transport {
  const url = new URL(baseUrl);
  // Plaintext: our own socket with Nagle off, as gRPC's own clients (C-core, grpc-js) set TCP_NODELAY.
  const sessionOptions: http2.SecureClientSessionOptions = url.protocol === "http:"
    ? { createConnection: () => tcpConnect({ host: url.hostname, port: Number(url.port || 80), noDelay: true }) }
    : { ...options.tls };
  const extra = Object.entries(options.headers ?? {});
  const sessions = new Http2SessionManager(url, options.ping, sessionOptions);
  const prefix = url.pathname.replace(/\/$/, "");
  const open = async (method: { parent: { typeName: string }; name: string }, signal: AbortSignal | undefined,
    timeoutMs: number | undefined, header: HeadersInit | undefined): Promise<Call> => {
    const headers: http2.OutgoingHttpHeaders = {
      "content-type": "application/grpc+proto",
      te: "trailers",
      "user-agent": "mabeam-ts/0.1 grpc-node-http2",
    };
    if (timeoutMs !== undefined && timeoutMs > 0) headers["grpc-timeout"] = grpcTimeout(timeoutMs);
    for (const [key, value] of extra) headers[key] = value;
    if (header !== undefined) new Headers(header).forEach((value, key) => { headers[key] = value; });
    const call = new Call(sessions, timeoutMs, signal);
    if (call.failure) throw call.failure; // aborted before it started
    try {
      call.attach(await sessions.request("POST", `${prefix}/${method.parent.typeName}/${method.name}`, headers, {}));
    } catch (error) {
      call.fail(transportError(error));
    }
    return call;
  };

  return {
    async unary<I extends DescMessage, O extends DescMessage>(method: DescMethodUnary<I, O>, signal: AbortSignal | undefined,
      timeoutMs: number | undefined, header: HeadersInit | undefined, input: MessageInitShape<I>): Promise<UnaryResponse<I, O>> {
      const call = await open(method, signal, timeoutMs, header);
      call.send(frame(toBinary(method.input, create(method.input, input))), true);
      const messages = await call.finished();
      if (messages.length !== 1) {
        throw new ConnectError(`protocol error: ${messages.length} response messages for a unary method`, Code.Unimplemented);
      }
      // Headers objects are built only if a caller asks (onHeader/onTrailer): they cost more than the call's framing.
      return { stream: false, service: method.parent, method, get header() { return call.responseHeaders(); },
        get trailer() { return call.responseTrailers(); }, message: fromBinary(method.output, messages[0]) as MessageShape<O> };
    },

    async stream<I extends DescMessage, O extends DescMessage>(method: DescMethodStreaming<I, O>, signal: AbortSignal | undefined,
      timeoutMs: number | undefined, header: HeadersInit | undefined, input: AsyncIterable<MessageInitShape<I>>): Promise<StreamResponse<I, O>> {
      const call = await open(method, signal, timeoutMs, header);
      void call.pump(input, (m) => frame(toBinary(method.input, create(method.input, m))));
      await call.response();
      async function* messages(): AsyncGenerator<MessageShape<O>> {
        try {
          for (;;) {
            const bytes = await call.next();
            if (bytes === undefined) return;
            yield fromBinary(method.output, bytes) as MessageShape<O>;
          }
        } finally {
          call.cancel(); // the consumer stopped early (break, throw): tell the server (no-op once closed)
        }
      }
      return { stream: true, service: method.parent, method, get header() { return call.responseHeaders(); },
        get trailer() { return call.responseTrailers(); }, message: messages() };
    },
  };
}

/** One gRPC call on one HTTP/2 stream: request frames out, response frames in, one final status. */
class Call {
  failure: ConnectError | undefined;
  private stream: http2.ClientHttp2Stream | undefined;
  private session: http2.Http2Session | undefined;
  private headers: http2.IncomingHttpHeaders | undefined;
  private trailers: http2.IncomingHttpHeaders | undefined;
  private streamError: unknown;
  private closed = false;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private messages: Uint8Array[] = [];
  private wake: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly onAbort = () => this.abortWith(new ConnectError(`the call was cancelled: ${String(this.signal?.reason ?? "")}`,
    Code.Canceled));

  constructor(private readonly sessions: Http2SessionManager, timeoutMs: number | undefined,
    private readonly signal: AbortSignal | undefined) {
    if (signal?.aborted) {
      this.onAbort();
      return;
    }
    signal?.addEventListener("abort", this.onAbort);
    if (timeoutMs !== undefined && timeoutMs > 0) {
      this.timer = setTimeout(() => this.abortWith(new ConnectError(`deadline of ${timeoutMs} ms exceeded`,
        Code.DeadlineExceeded)), timeoutMs);
    }
  }

  attach(stream: http2.ClientHttp2Stream): void {
    this.stream = stream;
    this.session = stream.session;
    if (this.failure) {
      stream.close(CANCEL); // cancelled while the session was being opened
    }
    stream.on("response", (headers) => {
      this.headers = headers;
      this.notify();
    });
    stream.on("trailers", (trailers) => {
      this.trailers = trailers;
    });
    stream.on("data", (chunk: Buffer) => {
      this.sessions.notifyResponseByteRead(stream);
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      this.split();
    });
    stream.on("error", (error) => {
      this.streamError ??= error;
    });
    stream.on("close", () => this.onClose(stream));
  }

  /** Write one framed message; `last` ends the request (END_STREAM on the same DATA frame). */
  send(bytes: Uint8Array, last: boolean): boolean {
    const stream = this.stream;
    if (!stream || this.closed || stream.writableEnded) return true;
    if (last) {
      stream.end(bytes);
      return true;
    }
    return stream.write(bytes);
  }

  /** Send every message of `input`, then end the request; a failing input cancels the call. */
  async pump<T>(input: AsyncIterable<T>, encode: (m: T) => Uint8Array): Promise<void> {
    try {
      for await (const message of input) {
        if (this.closed || !this.stream) break;
        if (!this.send(encode(message), false)) await this.drained();
      }
      if (!this.closed) this.stream?.end();
    } catch (error) {
      this.abortWith(error instanceof ConnectError ? error : new ConnectError(`request stream failed: ${String(error)}`,
        Code.Internal));
    }
  }

  /** The response headers (or the call's error, for a call that ended without a response). */
  async response(): Promise<void> {
    while (!this.headers && !this.closed) await this.wait();
    this.check();
  }

  /** The next response message, or undefined at the end of a successful call (the call's error otherwise). */
  async next(): Promise<Uint8Array | undefined> {
    for (;;) {
      const message = this.messages.shift();
      if (message !== undefined) {
        if (this.messages.length < HIGH_WATER / 4 && this.stream?.isPaused()) this.stream.resume();
        return message;
      }
      if (this.closed) {
        this.check();
        return undefined;
      }
      await this.wait();
    }
  }

  /** Every response message once the call ended (rejects with its error). */
  async finished(): Promise<Uint8Array[]> {
    while (!this.closed) await this.wait();
    this.check();
    return this.messages;
  }

  /** Cancel the call (RST_STREAM CANCEL) unless it already ended. */
  cancel(): void {
    if (!this.closed) this.abortWith(new ConnectError("the call was cancelled by the client", Code.Canceled));
  }

  fail(error: ConnectError): void {
    this.failure ??= error;
    this.finish();
  }

  responseHeaders(): Headers {
    return toHeaders(this.headers);
  }

  responseTrailers(): Headers {
    return toHeaders(this.trailers);
  }

  private abortWith(error: ConnectError): void {
    this.failure ??= error;
    if (this.stream && !this.stream.closed) this.stream.close(CANCEL);
    else this.finish();
  }

  private check(): void {
    if (this.failure) throw this.failure;
  }

  private wait(): Promise<void> {
    return new Promise((resolve) => { this.wake = resolve; });
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.stream?.off("drain", done);
        this.stream?.off("close", done);
        resolve();
      };
      this.stream?.once("drain", done);
      this.stream?.once("close", done);
    });
  }

  /** Cut complete length-prefixed messages out of the received bytes. */
  private split(): void {
    while (this.pendingBytes >= 5) {
      if (this.pending.length > 1) this.pending = [Buffer.concat(this.pending)];
      const buffer = this.pending[0];
      const length = buffer.readUInt32BE(1);
      if (this.pendingBytes < 5 + length) break;
      if (buffer[0] & 1) {
        this.abortWith(new ConnectError("protocol error: a compressed response message (none was negotiated)", Code.Internal));
        return;
      }
      this.messages.push(buffer.subarray(5, 5 + length));
      const rest = buffer.subarray(5 + length);
      this.pending = rest.length > 0 ? [rest] : [];
      this.pendingBytes = rest.length;
    }
    if (this.messages.length >= HIGH_WATER) this.stream?.pause();
    this.notify();
  }

  private onClose(stream: http2.ClientHttp2Stream): void {
    if (!this.failure) {
      const error = this.status(stream);
      if (error) this.failure = error;
    }
    this.finish();
  }

  /** The call's outcome from its trailers (or a trailers-only response), else from how the stream ended. */
  private status(stream: http2.ClientHttp2Stream): ConnectError | undefined {
    const headers = this.headers;
    const httpStatus = Number(headers?.[":status"] ?? 200);
    if (httpStatus !== 200) {
      return new ConnectError(`HTTP ${httpStatus}`, codeFromHttpStatus(httpStatus));
    }
    const source = this.trailers?.["grpc-status"] !== undefined ? this.trailers
      : headers?.["grpc-status"] !== undefined ? headers : undefined;
    if (source) {
      if (source["grpc-status"] === "0") {
        return this.pendingBytes > 0 ? new ConnectError("protocol error: a truncated response message", Code.Internal) : undefined;
      }
      return findTrailerError(toHeaders(source)) ?? new ConnectError("protocol error: invalid grpc-status", Code.Internal);
    }
    if (this.streamError !== undefined) return transportError(this.streamError);
    // Node closes a session's streams with CANCEL when the connection goes: that is no RST_STREAM of the server's.
    if (this.session?.destroyed) {
      return new ConnectError("connection lost: the connection closed under the call", Code.Unavailable);
    }
    if (stream.rstCode !== undefined && stream.rstCode !== NO_ERROR) return resetError(stream.rstCode);
    return new ConnectError(headers ? "the server ended the call without a status" : "the connection closed before a response",
      Code.Unavailable);
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.signal?.removeEventListener("abort", this.onAbort);
    this.notify();
  }
}

/** A message with gRPC's 5-byte prefix (uncompressed flag, big-endian length). */
function frame(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/** grpc-timeout: at most 8 digits and a unit. */
function grpcTimeout(ms: number): string {
  const whole = Math.ceil(ms);
  return whole < 1e8 ? `${whole}m` : `${Math.min(Math.ceil(whole / 1000), 99999999)}S`;
}

function toHeaders(headers: http2.IncomingHttpHeaders | undefined): Headers {
  const out = new Headers();
  for (const [key, value] of Object.entries(headers ?? {})) {
    if (key.startsWith(":") || value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) out.append(key, v);
  }
  return out;
}

/** An RST_STREAM from the server, mapped as gRPC's HTTP/2 spec says (PROTOCOL-HTTP2.md, "Errors"). */
function resetError(code: number): ConnectError {
  const message = `the server reset the stream (HTTP/2 error 0x${code.toString(16)})`;
  if (code === REFUSED_STREAM) return new ConnectError(message, Code.Unavailable);
  if (code === CANCEL) return new ConnectError(message, Code.Canceled);
  if (code === ENHANCE_YOUR_CALM) return new ConnectError(message, Code.ResourceExhausted);
  return new ConnectError(message, Code.Internal);
}

/** A transport failure as a gRPC error: a lost or refused connection is UNAVAILABLE, as in gRPC's clients. */
function transportError(error: unknown): ConnectError {
  if (error instanceof ConnectError) return error;
  for (let e: unknown = error; e instanceof Error; e = e.cause) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && CONNECTION_LOST.has(code)) {
      return new ConnectError(`connection lost: ${e.message}`, Code.Unavailable, undefined, undefined, error);
    }
    // A failed TLS handshake (an untrusted server certificate, a client certificate refused): gRPC's own
    // clients report the connection as UNAVAILABLE, with the reason in the message.
    if ((typeof code === "string" && (code.startsWith("ERR_SSL_") || code.startsWith("ERR_TLS_") || TLS_VERIFY.has(code)))
      || (e as { library?: unknown }).library === "SSL routines") {
      return new ConnectError(`TLS handshake failed: ${e.message}`, Code.Unavailable, undefined, undefined, error);
    }
  }
  return ConnectError.from(error, Code.Internal);
}
