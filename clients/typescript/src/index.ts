/**
 * TypeScript (Node) client of llmgateway, over Connect's gRPC transport (HTTP/2).
 *
 * ```ts
 * import { createClient } from "@llmgateway/client";
 * const client = createClient({ address: "127.0.0.1:50051", insecure: true });
 * for await (const event of client.stream({ model: "default", messages: "Hello" })) {
 *   if (event.type === "delta") process.stdout.write(event.text);
 *   else console.log("\n", event.completion.usage, event.completion.cost);
 * }
 * ```
 */

export {
  bearerAuth,
  createClient,
  DEFAULT_ADDRESS,
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_TIMEOUT_MS,
  USER_AGENT,
  VERSION,
  type CallOptions,
  type ChatMessage,
  type ClientOptions,
  type CompletionRequest,
  type CountTokensRequest,
  type GatewayClient,
  type MessagesInput,
  type RoleInput,
  type StreamEvent,
} from "./client.js";
export {
  BudgetExceededError,
  CancelledError,
  ContentBlockedError,
  ContextWindowExceededError,
  CostLimitExceededError,
  DeadlineExceededError,
  ERROR_DOMAIN,
  errorFromConnectError,
  GatewayError,
  grpcCodeName,
  InternalError,
  InvalidRequestError,
  ModelNotFoundError,
  PermissionDeniedError,
  ProtocolError,
  RateLimitedError,
  ResourceExhaustedError,
  toGatewayError,
  UnauthenticatedError,
  UnavailableError,
  type ErrorDetail,
  type FieldViolation,
  type GatewayErrorInit,
  type QuotaViolation,
} from "./errors.js";
export {
  AttemptOutcome,
  ContextPolicy,
  FinishReason,
  Role,
  type Attempt,
  type Completion,
  type Cost,
  type CountTokensResponse,
  type Model,
  type Price,
  type Target,
  type Usage,
} from "./gen/llmgateway/v1/gateway_pb.js";
export { GatewayService } from "./gen/llmgateway/v1/gateway_pb.js";
export type {
  BadRequest,
  ErrorInfo,
  QuotaFailure,
  RetryInfo,
} from "./gen/google/rpc/error_details_pb.js";

/** Format an amount of nano-USD (1e-9 USD) as a decimal string of dollars, exactly. */
export function formatNanoUsd(nanoUsd: bigint): string {
  const negative = nanoUsd < 0n;
  const abs = negative ? -nanoUsd : nanoUsd;
  const whole = abs / 1_000_000_000n;
  const frac = (abs % 1_000_000_000n).toString().padStart(9, "0").replace(/0+$/, "");
  return `${negative ? "-" : ""}${whole}${frac ? `.${frac}` : ""}`;
}
