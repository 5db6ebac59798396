/**
 * Every error the client throws, decoded from gRPC statuses.
 *
 * The gateway reports errors as gRPC statuses carrying `google.rpc` details: an
 * `ErrorInfo` (domain "llmgateway") whose `reason` picks the error class, and for some
 * reasons `BadRequest`, `QuotaFailure` or `RetryInfo`. A reason this client does not
 * know falls back to the class for the status code. Detail types the client does not
 * know are skipped (their type names are kept in `unknownDetailTypes`), never fatal.
 *
 * ```
 * GatewayError
 * ├─ UnauthenticatedError ........ UNAUTHENTICATED     API_KEY_INVALID
 * ├─ PermissionDeniedError ....... PERMISSION_DENIED   MODEL_NOT_ALLOWED, TENANT_KEY_REQUIRED
 * ├─ ModelNotFoundError .......... NOT_FOUND           MODEL_NOT_FOUND
 * ├─ InvalidRequestError ......... INVALID_ARGUMENT    INVALID_REQUEST (or any other reason)
 * │  ├─ ContextWindowExceededError INVALID_ARGUMENT    CONTEXT_WINDOW_EXCEEDED
 * │  └─ ContentBlockedError ...... INVALID_ARGUMENT    CONTENT_BLOCKED
 * ├─ ResourceExhaustedError ...... RESOURCE_EXHAUSTED  (any other reason, or gRPC's own
 * │  │                                                  message-size limit)
 * │  ├─ CostLimitExceededError ... RESOURCE_EXHAUSTED  COST_LIMIT_EXCEEDED
 * │  ├─ BudgetExceededError ...... RESOURCE_EXHAUSTED  BUDGET_EXCEEDED
 * │  └─ RateLimitedError ......... RESOURCE_EXHAUSTED  RATE_LIMITED
 * ├─ UnavailableError ............ UNAVAILABLE         UPSTREAM_UNAVAILABLE, STORE_UNAVAILABLE,
 * │                                                    or no connection to the gateway
 * ├─ DeadlineExceededError ....... DEADLINE_EXCEEDED   the call's deadline passed
 * ├─ CancelledError .............. CANCELLED           the call's AbortSignal fired, or the
 * │                                                    gateway cancelled it
 * ├─ InternalError ............... INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS
 * └─ ProtocolError ............... the gateway broke the contract (e.g. a stream that
 *                                  ended without its result)
 * ```
 *
 * Any other status (e.g. ALREADY_EXISTS, REQUEST_ID_REUSED) is a plain `GatewayError`.
 */

import { Code, ConnectError } from "@connectrpc/connect";
import type { DescMessage, Message } from "@bufbuild/protobuf";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
  type BadRequest,
  type ErrorInfo,
  type QuotaFailure,
  type RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";

/** The ErrorInfo domain of the gateway's own errors. */
export const ERROR_DOMAIN = "llmgateway";

/** gRPC status code names, indexed by Connect's numeric `Code` (which equals the gRPC code). */
const CODE_NAMES: Record<number, string> = {
  0: "OK",
  1: "CANCELLED",
  2: "UNKNOWN",
  3: "INVALID_ARGUMENT",
  4: "DEADLINE_EXCEEDED",
  5: "NOT_FOUND",
  6: "ALREADY_EXISTS",
  7: "PERMISSION_DENIED",
  8: "RESOURCE_EXHAUSTED",
  9: "FAILED_PRECONDITION",
  10: "ABORTED",
  11: "OUT_OF_RANGE",
  12: "UNIMPLEMENTED",
  13: "INTERNAL",
  14: "UNAVAILABLE",
  15: "DATA_LOSS",
  16: "UNAUTHENTICATED",
};

/** The gRPC name of a status code, e.g. `grpcCodeName(Code.NotFound) === "NOT_FOUND"`. */
export function grpcCodeName(code: Code): string {
  return CODE_NAMES[code] ?? `CODE_${code}`;
}

/** One `google.rpc.BadRequest` field violation. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** One `google.rpc.QuotaFailure` violation. */
export interface QuotaViolation {
  subject: string;
  description: string;
}

/** A decoded `google.rpc` detail the client knows. */
export type ErrorDetail = ErrorInfo | BadRequest | RetryInfo | QuotaFailure;

/** What a `GatewayError` is built from. */
export interface GatewayErrorInit {
  code: Code;
  message: string;
  reason?: string | undefined;
  domain?: string | undefined;
  metadata?: Record<string, string> | undefined;
  details?: readonly ErrorDetail[] | undefined;
  unknownDetailTypes?: readonly string[] | undefined;
  cause?: unknown;
}

/** Base class of every error the client throws for a failed call. */
export class GatewayError extends Error {
  /** The status code (Connect's `Code`, numerically the gRPC code). */
  readonly code: Code;
  /** The ErrorInfo reason (e.g. "MODEL_NOT_FOUND"), or undefined when the status had none. */
  readonly reason: string | undefined;
  /** The ErrorInfo domain ("llmgateway"), or undefined. */
  readonly domain: string | undefined;
  /** The ErrorInfo metadata (empty when none). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Every decoded `google.rpc` detail of the status (ErrorInfo, BadRequest, RetryInfo, QuotaFailure). */
  readonly details: readonly ErrorDetail[];
  /** Type names of the status details this client does not decode (skipped, never fatal). */
  readonly unknownDetailTypes: readonly string[];
  /** Milliseconds to wait before retrying, from `google.rpc.RetryInfo`; undefined when no hint. */
  readonly retryDelayMs: number | undefined;
  /** `google.rpc.BadRequest` field violations (empty when none). */
  readonly fieldViolations: readonly FieldViolation[];
  /** `google.rpc.QuotaFailure` violations (empty when none). */
  readonly quotaViolations: readonly QuotaViolation[];

  constructor(init: GatewayErrorInit) {
    // `message` is the status message as the gateway sent it (the code name when empty).
    super(init.message || (init.reason ?? grpcCodeName(init.code)), { cause: init.cause });
    this.name = new.target.name;
    this.code = init.code;
    this.reason = init.reason;
    this.domain = init.domain;
    this.metadata = Object.freeze({ ...(init.metadata ?? {}) });
    this.details = Object.freeze([...(init.details ?? [])]);
    this.unknownDetailTypes = Object.freeze([...(init.unknownDetailTypes ?? [])]);
    let retryDelayMs: number | undefined;
    const fieldViolations: FieldViolation[] = [];
    const quotaViolations: QuotaViolation[] = [];
    for (const detail of this.details) {
      switch (detail.$typeName) {
        case "google.rpc.RetryInfo":
          if (detail.retryDelay !== undefined) {
            retryDelayMs =
              Number(detail.retryDelay.seconds) * 1000 + Math.round(detail.retryDelay.nanos / 1e6);
          }
          break;
        case "google.rpc.BadRequest":
          for (const v of detail.fieldViolations) {
            fieldViolations.push({ field: v.field, description: v.description });
          }
          break;
        case "google.rpc.QuotaFailure":
          for (const v of detail.violations) {
            quotaViolations.push({ subject: v.subject, description: v.description });
          }
          break;
        default:
          break;
      }
    }
    this.retryDelayMs = retryDelayMs;
    this.fieldViolations = Object.freeze(fieldViolations);
    this.quotaViolations = Object.freeze(quotaViolations);
  }

  /** The gRPC name of `code`, e.g. "NOT_FOUND". */
  get codeName(): string {
    return grpcCodeName(this.code);
  }

  /** True when the status carried a detail of the given type (e.g. "google.rpc.QuotaFailure"). */
  hasDetail(typeName: string): boolean {
    return this.details.some((d) => d.$typeName === typeName);
  }
}

/** The API key is missing, unknown or revoked (API_KEY_INVALID). */
export class UnauthenticatedError extends GatewayError {}

/** The caller's tenant may not use the model (MODEL_NOT_ALLOWED), or an admin key was used. */
export class PermissionDeniedError extends GatewayError {
  /** The refused model, when the gateway said. */
  get model(): string | undefined {
    return this.metadata["model"];
  }
  /** The caller's tenant, when the gateway said. */
  get tenant(): string | undefined {
    return this.metadata["tenant"];
  }
}

/** No route has the requested model name (MODEL_NOT_FOUND). */
export class ModelNotFoundError extends GatewayError {
  /** The unknown model, when the gateway said. */
  get model(): string | undefined {
    return this.metadata["model"];
  }
}

/** The request is malformed (INVALID_REQUEST); see `fieldViolations`. */
export class InvalidRequestError extends GatewayError {}

/** The prompt does not fit the context window and the policy is to reject. */
export class ContextWindowExceededError extends InvalidRequestError {
  /** Tokens the prompt uses (metadata input_token_count). */
  get inputTokens(): number | undefined {
    return intOrUndefined(this.metadata["input_token_count"]);
  }
  /** Output tokens requested (metadata max_tokens). */
  get maxTokens(): number | undefined {
    return intOrUndefined(this.metadata["max_tokens"]);
  }
  /** The context window (metadata context_window_token_count). */
  get contextWindow(): number | undefined {
    return intOrUndefined(this.metadata["context_window_token_count"]);
  }
}

/** Moderation refused the prompt (CONTENT_BLOCKED). Blocked *output* is not an error. */
export class ContentBlockedError extends InvalidRequestError {
  /** The moderation category, when the gateway said. */
  get category(): string | undefined {
    return this.metadata["category"];
  }
}

/** A limit was hit (RESOURCE_EXHAUSTED); the subclasses say which. */
export class ResourceExhaustedError extends GatewayError {}

/** The call's estimated cost is over the per-request cost limit (COST_LIMIT_EXCEEDED). */
export class CostLimitExceededError extends ResourceExhaustedError {
  /** The per-request limit, in nano-USD. */
  get limitNanoUsd(): bigint | undefined {
    return bigintOrUndefined(this.metadata["limit_nano_usd"]);
  }
  /** The call's estimated cost, in nano-USD. */
  get estimatedNanoUsd(): bigint | undefined {
    return bigintOrUndefined(this.metadata["estimated_nano_usd"]);
  }
}

/** The tenant's budget is spent (BUDGET_EXCEEDED); `retryDelayMs` says when it resets. */
export class BudgetExceededError extends ResourceExhaustedError {}

/** The tenant is over its rate limit (RATE_LIMITED); `retryDelayMs` says when to retry. */
export class RateLimitedError extends ResourceExhaustedError {}

/**
 * The gateway or every upstream target is unavailable (UPSTREAM_UNAVAILABLE,
 * STORE_UNAVAILABLE, or no connection at all); worth retrying after `retryDelayMs`.
 */
export class UnavailableError extends GatewayError {
  /** The gateway's attempts, in order, as `"<provider>/<model>:<CLASS>"` strings. */
  get attempts(): string[] {
    const numbered: [number, string][] = [];
    for (const [key, value] of Object.entries(this.metadata)) {
      const match = /^attempt_(\d+)$/.exec(key);
      if (match?.[1] !== undefined) {
        numbered.push([Number.parseInt(match[1], 10), value]);
      }
    }
    return numbered.sort((a, b) => a[0] - b[0]).map(([, value]) => value);
  }
  /** The number of attempts the gateway made (metadata attempt_count). */
  get attemptCount(): number | undefined {
    return intOrUndefined(this.metadata["attempt_count"]);
  }
}

/** The call's deadline passed (the client's `timeoutMs`, or the gateway's own). */
export class DeadlineExceededError extends GatewayError {}

/** The call was cancelled: its AbortSignal fired, or the gateway cancelled it. */
export class CancelledError extends GatewayError {}

/** The gateway failed internally; details are only in its logs. */
export class InternalError extends GatewayError {}

/** The gateway broke the contract, e.g. a stream ended without its result. */
export class ProtocolError extends GatewayError {
  constructor(message: string) {
    super({ code: Code.Internal, message });
  }
}

type ErrorClass = new (init: GatewayErrorInit) => GatewayError;

const BY_REASON: Record<string, ErrorClass> = {
  API_KEY_INVALID: UnauthenticatedError,
  MODEL_NOT_ALLOWED: PermissionDeniedError,
  TENANT_KEY_REQUIRED: PermissionDeniedError,
  MODEL_NOT_FOUND: ModelNotFoundError,
  INVALID_REQUEST: InvalidRequestError,
  CONTEXT_WINDOW_EXCEEDED: ContextWindowExceededError,
  CONTENT_BLOCKED: ContentBlockedError,
  COST_LIMIT_EXCEEDED: CostLimitExceededError,
  BUDGET_EXCEEDED: BudgetExceededError,
  RATE_LIMITED: RateLimitedError,
  UPSTREAM_UNAVAILABLE: UnavailableError,
  STORE_UNAVAILABLE: UnavailableError,
  DEADLINE_EXCEEDED: DeadlineExceededError,
  INTERNAL: InternalError,
};

const BY_CODE: Partial<Record<Code, ErrorClass>> = {
  [Code.Unauthenticated]: UnauthenticatedError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.NotFound]: ModelNotFoundError,
  [Code.InvalidArgument]: InvalidRequestError,
  [Code.ResourceExhausted]: ResourceExhaustedError,
  [Code.Unavailable]: UnavailableError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
  [Code.Canceled]: CancelledError,
  [Code.Internal]: InternalError,
  [Code.Unknown]: InternalError,
  [Code.Unimplemented]: InternalError,
  [Code.DataLoss]: InternalError,
};

const KNOWN_DETAILS: readonly DescMessage[] = [
  ErrorInfoSchema,
  BadRequestSchema,
  RetryInfoSchema,
  QuotaFailureSchema,
];

/**
 * Decode the details of a `ConnectError` with the generated google.rpc schemas.
 * Unknown types, and known types whose bytes do not decode, are skipped.
 */
function decodeDetails(error: ConnectError): {
  details: ErrorDetail[];
  unknownDetailTypes: string[];
} {
  const details: ErrorDetail[] = [];
  const unknownDetailTypes: string[] = [];
  for (const schema of KNOWN_DETAILS) {
    let found: Message[] = [];
    try {
      found = error.findDetails(schema);
    } catch {
      // findDetails already skips details that fail to decode; be defensive anyway.
    }
    details.push(...(found as ErrorDetail[]));
  }
  const known = new Set(KNOWN_DETAILS.map((s) => s.typeName));
  for (const raw of error.details) {
    const typeName = "desc" in raw ? raw.desc.typeName : raw.type;
    if (!known.has(typeName)) {
      unknownDetailTypes.push(typeName);
    }
  }
  return { details, unknownDetailTypes };
}

/**
 * Build the typed error for a failed call's `ConnectError`.
 *
 * The class comes from the ErrorInfo reason when its domain is "llmgateway" (or empty),
 * else from the status code.
 */
export function errorFromConnectError(error: ConnectError): GatewayError {
  const { details, unknownDetailTypes } = decodeDetails(error);
  const info = details.find((d): d is ErrorInfo => d.$typeName === "google.rpc.ErrorInfo");
  const reason = info?.reason ? info.reason : undefined;
  const domain = info?.domain ? info.domain : undefined;
  let cls: ErrorClass | undefined;
  if (reason !== undefined && (domain === undefined || domain === ERROR_DOMAIN)) {
    cls = BY_REASON[reason];
  }
  cls ??= BY_CODE[error.code] ?? GatewayError;
  return new cls({
    code: error.code,
    message: error.rawMessage,
    reason,
    domain,
    metadata: info ? { ...info.metadata } : undefined,
    details,
    unknownDetailTypes,
    cause: error,
  });
}

/**
 * Convert anything a call threw into a `GatewayError` when it is a `ConnectError`
 * (or already a `GatewayError`); other values are returned unchanged.
 */
export function toGatewayError(error: unknown): unknown {
  if (error instanceof GatewayError) {
    return error;
  }
  if (error instanceof ConnectError) {
    return errorFromConnectError(error);
  }
  return error;
}

function intOrUndefined(value: string | undefined): number | undefined {
  if (value === undefined || !/^-?\d+$/.test(value)) {
    return undefined;
  }
  return Number.parseInt(value, 10);
}

function bigintOrUndefined(value: string | undefined): bigint | undefined {
  if (value === undefined || !/^-?\d+$/.test(value)) {
    return undefined;
  }
  return BigInt(value);
}
