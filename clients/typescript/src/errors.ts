/**
 * The SDK's errors: every failed call rejects with a {@link MabeamError} carrying the gRPC code,
 * the server's message and the google.rpc details (ErrorInfo reason and metadata, RetryInfo,
 * BadRequest field violations). {@link translate} is the one place they are decoded.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { ErrorReason } from "./gen/mabeam/v1/common_pb.js";

/** gRPC code names as agentd's payloads carry them ("NOT_FOUND"), indexed by code. */
export const CODE_NAMES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
  "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"] as const;

export type CodeName = (typeof CODE_NAMES)[number];

/** A failed mabeam call. `code` is the gRPC code name; `reason` the mabeam.v1.ErrorReason name. */
export class MabeamError extends Error {
  readonly code: CodeName;
  readonly reason: string;
  readonly metadata: Record<string, string>;
  readonly fieldViolations: Record<string, string>;
  /** Seconds the server suggests waiting before a retry (RetryInfo), or undefined. */
  readonly retryAfter?: number;

  constructor(code: CodeName, message: string, opts: { reason?: string; metadata?: Record<string, string>;
    fieldViolations?: Record<string, string>; retryAfter?: number } = {}) {
    super(message);
    this.name = `MabeamError(${code})`;
    this.code = code;
    this.reason = opts.reason ?? "";
    this.metadata = opts.metadata ?? {};
    this.fieldViolations = opts.fieldViolations ?? {};
    this.retryAfter = opts.retryAfter;
  }

  /** The numeric gRPC code. */
  get codeValue(): number {
    return CODE_NAMES.indexOf(this.code);
  }

  /** The reason as the contract's enum (`ErrorReason.ERROR_REASON_UNSPECIFIED` when absent or unknown here). */
  get reasonCode(): ErrorReason {
    return (ErrorReason as unknown as Record<string, ErrorReason>)[this.reason] ?? ErrorReason.ERROR_REASON_UNSPECIFIED;
  }

  /** True when this is `code` (and, if given, `reason`): `error.is("FAILED_PRECONDITION", "APPROVAL_DECIDED")`. */
  is(code: CodeName, reason?: keyof typeof ErrorReason): boolean {
    return this.code === code && (reason === undefined || this.reason === reason);
  }
}

/** The code name for a numeric gRPC code (UNKNOWN for others). */
export function codeName(code: number): CodeName {
  return CODE_NAMES[code] ?? "UNKNOWN";
}

/** The code name for a string that may not be one ("UNKNOWN" then). */
export function asCodeName(name: string): CodeName {
  return (CODE_NAMES as readonly string[]).includes(name) ? (name as CodeName) : "UNKNOWN";
}

/** Turn anything a call threw into a MabeamError with the server's rich details. */
export function translate(error: unknown): MabeamError {
  if (error instanceof MabeamError) return error;
  const connect = ConnectError.from(error);
  const code = connect.code === Code.Canceled && isAbort(error) ? "CANCELLED" : codeName(connect.code);
  const info = connect.findDetails(ErrorInfoSchema)[0];
  const bad = connect.findDetails(BadRequestSchema)[0];
  const retry = connect.findDetails(RetryInfoSchema)[0];
  const fieldViolations: Record<string, string> = {};
  for (const v of bad?.fieldViolations ?? []) fieldViolations[v.field] = v.description;
  const delay = retry?.retryDelay;
  return new MabeamError(code, connect.rawMessage, {
    reason: info?.reason ?? "",
    metadata: { ...(info?.metadata ?? {}) },
    fieldViolations,
    retryAfter: delay ? Number(delay.seconds) + delay.nanos / 1e9 : undefined,
  });
}

function isAbort(error: unknown): boolean {
  return error instanceof Error && error.name === "AbortError";
}

/** Await a call and translate its failure. */
export async function call<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (error) {
    throw translate(error);
  }
}
