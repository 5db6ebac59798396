/**
 * Error decoding, with no server: statuses are built as the gateway sends them (a
 * google.rpc.Status in the grpc-status-details-bin trailer) and parsed by Connect's own
 * gRPC trailer parser, then mapped to the typed errors.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { anyPack, DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, encodeBinaryHeader } from "@connectrpc/connect";
import { findTrailerError } from "@connectrpc/connect/protocol-grpc";

import {
  BudgetExceededError,
  CancelledError,
  ContentBlockedError,
  ContextWindowExceededError,
  CostLimitExceededError,
  DeadlineExceededError,
  errorFromConnectError,
  GatewayError,
  InternalError,
  InvalidRequestError,
  ModelNotFoundError,
  PermissionDeniedError,
  RateLimitedError,
  ResourceExhaustedError,
  toGatewayError,
  UnauthenticatedError,
  UnavailableError,
} from "../src/index.js";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "../src/gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../src/gen/google/rpc/status_pb.js";
import type { Any } from "@bufbuild/protobuf/wkt";

function info(reason: string, metadata: Record<string, string> = {}, domain = "llmgateway"): Any {
  return anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason, domain, metadata }));
}

function retry(seconds: number, nanos = 0): Any {
  return anyPack(
    RetryInfoSchema,
    create(RetryInfoSchema, { retryDelay: create(DurationSchema, { seconds: BigInt(seconds), nanos }) }),
  );
}

function quota(subject: string, description: string): Any {
  return anyPack(
    QuotaFailureSchema,
    create(QuotaFailureSchema, { violations: [{ subject, description }] }),
  );
}

function badRequest(...fields: string[]): Any {
  return anyPack(
    BadRequestSchema,
    create(BadRequestSchema, {
      fieldViolations: fields.map((field) => ({ field, description: `bad ${field}` })),
    }),
  );
}

function unknownDetail(typeName = "conformance.NoClientKnowsThis"): Any {
  return { $typeName: "google.protobuf.Any", typeUrl: `type.googleapis.com/${typeName}`, value: new Uint8Array([8, 1]) };
}

/** Parse a status the way the gRPC transport does: from the trailers. */
function statusError(code: Code, message: string, details: Any[]): ConnectError {
  const status: MessageInitShape<typeof StatusSchema> = { code, message, details };
  const trailer = new Headers({
    "grpc-status": String(code),
    "grpc-message": encodeURIComponent(message),
    "grpc-status-details-bin": encodeBinaryHeader(create(StatusSchema, status), StatusSchema),
  });
  const error = findTrailerError(trailer);
  assert.ok(error instanceof ConnectError);
  return error;
}

function decode(code: Code, message: string, details: Any[]): GatewayError {
  return errorFromConnectError(statusError(code, message, details));
}

test("MODEL_NOT_FOUND -> ModelNotFoundError with metadata", () => {
  const error = decode(Code.NotFound, "no route named x", [info("MODEL_NOT_FOUND", { model: "x" })]);
  assert.ok(error instanceof ModelNotFoundError);
  assert.equal(error.code, Code.NotFound);
  assert.equal(error.codeName, "NOT_FOUND");
  assert.equal(error.reason, "MODEL_NOT_FOUND");
  assert.equal(error.domain, "llmgateway");
  assert.equal(error.message, "no route named x");
  assert.equal(error.model, "x");
  assert.deepEqual(error.metadata, { model: "x" });
  assert.equal(error.name, "ModelNotFoundError");
  assert.ok(error.cause instanceof ConnectError);
});

test("an unknown detail type is skipped, never fatal", () => {
  const error = decode(Code.InvalidArgument, "odd", [
    unknownDetail(),
    info("CONFORMANCE_ODD", { k: "v" }),
  ]);
  assert.ok(error instanceof InvalidRequestError);
  assert.equal(error.reason, "CONFORMANCE_ODD");
  assert.deepEqual(error.metadata, { k: "v" });
  assert.deepEqual(error.unknownDetailTypes, ["conformance.NoClientKnowsThis"]);
  assert.equal(error.details.length, 1);
});

test("a known detail type whose bytes do not decode is skipped", () => {
  const broken: Any = {
    $typeName: "google.protobuf.Any",
    typeUrl: "type.googleapis.com/google.rpc.RetryInfo",
    value: new Uint8Array([0x0a, 0xff, 0xff]), // a truncated length-delimited field
  };
  const error = decode(Code.Unavailable, "down", [broken, info("UPSTREAM_UNAVAILABLE")]);
  assert.ok(error instanceof UnavailableError);
  assert.equal(error.retryDelayMs, undefined);
});

test("only unknown details: the class comes from the code", () => {
  const error = decode(Code.PermissionDenied, "no", [unknownDetail("x.Y"), unknownDetail("x.Z")]);
  assert.ok(error instanceof PermissionDeniedError);
  assert.equal(error.reason, undefined);
  assert.deepEqual(error.unknownDetailTypes, ["x.Y", "x.Z"]);
});

test("a reason of another domain does not pick the class", () => {
  const error = decode(Code.NotFound, "x", [info("API_KEY_INVALID", {}, "example.com")]);
  assert.ok(error instanceof ModelNotFoundError);
  assert.equal(error.reason, "API_KEY_INVALID");
  assert.equal(error.domain, "example.com");
});

test("INVALID_REQUEST carries field violations", () => {
  const error = decode(Code.InvalidArgument, "bad", [
    info("INVALID_REQUEST"),
    badRequest("temperature", "messages[0].role"),
  ]);
  assert.ok(error instanceof InvalidRequestError);
  assert.deepEqual(
    error.fieldViolations.map((v) => v.field),
    ["temperature", "messages[0].role"],
  );
  assert.equal(error.fieldViolations[0]?.description, "bad temperature");
});

test("CONTEXT_WINDOW_EXCEEDED exposes the counts", () => {
  const error = decode(Code.InvalidArgument, "too long", [
    info("CONTEXT_WINDOW_EXCEEDED", {
      input_token_count: "90",
      max_tokens: "16",
      context_window_token_count: "64",
    }),
  ]);
  assert.ok(error instanceof ContextWindowExceededError);
  assert.ok(error instanceof InvalidRequestError);
  assert.equal(error.inputTokens, 90);
  assert.equal(error.maxTokens, 16);
  assert.equal(error.contextWindow, 64);
});

test("CONTENT_BLOCKED exposes the category", () => {
  const error = decode(Code.InvalidArgument, "blocked", [info("CONTENT_BLOCKED", { category: "pii" })]);
  assert.ok(error instanceof ContentBlockedError);
  assert.equal(error.category, "pii");
});

test("COST_LIMIT_EXCEEDED carries the QuotaFailure and amounts", () => {
  const error = decode(Code.ResourceExhausted, "too costly", [
    info("COST_LIMIT_EXCEEDED", { limit_nano_usd: "1", estimated_nano_usd: "2000" }),
    quota("request", "cost over limit"),
  ]);
  assert.ok(error instanceof CostLimitExceededError);
  assert.ok(error instanceof ResourceExhaustedError);
  assert.equal(error.limitNanoUsd, 1n);
  assert.equal(error.estimatedNanoUsd, 2000n);
  assert.deepEqual(error.quotaViolations, [{ subject: "request", description: "cost over limit" }]);
  assert.ok(error.hasDetail("google.rpc.QuotaFailure"));
});

test("BUDGET_EXCEEDED and RATE_LIMITED carry RetryInfo", () => {
  const budget = decode(Code.ResourceExhausted, "spent", [
    info("BUDGET_EXCEEDED", { scope: "tenant" }),
    quota("tenant:t", "daily budget"),
    retry(3600),
  ]);
  assert.ok(budget instanceof BudgetExceededError);
  assert.equal(budget.retryDelayMs, 3_600_000);
  const rate = decode(Code.ResourceExhausted, "slow down", [info("RATE_LIMITED"), retry(1, 500_000_000)]);
  assert.ok(rate instanceof RateLimitedError);
  assert.equal(rate.retryDelayMs, 1500);
});

test("UPSTREAM_UNAVAILABLE lists the attempts in order", () => {
  const error = decode(Code.Unavailable, "every target failed", [
    info("UPSTREAM_UNAVAILABLE", {
      attempt_count: "3",
      attempt_10: "c/m3:TIMEOUT",
      attempt_2: "b/m2:TRANSIENT",
      attempt_1: "a/m1:RATE_LIMITED",
    }),
    retry(7),
  ]);
  assert.ok(error instanceof UnavailableError);
  assert.equal(error.retryDelayMs, 7000);
  assert.equal(error.attemptCount, 3);
  assert.deepEqual(error.attempts, ["a/m1:RATE_LIMITED", "b/m2:TRANSIENT", "c/m3:TIMEOUT"]);
});

test("every reason and code of the contract maps to its class", () => {
  const cases: [Code, string | undefined, new (...a: never[]) => GatewayError][] = [
    [Code.Unauthenticated, "API_KEY_INVALID", UnauthenticatedError],
    [Code.PermissionDenied, "MODEL_NOT_ALLOWED", PermissionDeniedError],
    [Code.PermissionDenied, "TENANT_KEY_REQUIRED", PermissionDeniedError],
    [Code.Unavailable, "STORE_UNAVAILABLE", UnavailableError],
    [Code.DeadlineExceeded, "DEADLINE_EXCEEDED", DeadlineExceededError],
    [Code.Internal, "INTERNAL", InternalError],
    [Code.Canceled, undefined, CancelledError],
    [Code.ResourceExhausted, undefined, ResourceExhaustedError],
    [Code.Unknown, undefined, InternalError],
    [Code.Unimplemented, undefined, InternalError],
  ];
  for (const [code, reason, cls] of cases) {
    const error = decode(code, "m", reason ? [info(reason)] : []);
    assert.ok(error instanceof cls, `${String(reason)} -> ${error.name}, want ${cls.name}`);
    assert.equal(error.code, code);
  }
  const reused = decode(Code.AlreadyExists, "again", [info("REQUEST_ID_REUSED")]);
  assert.equal(reused.constructor, GatewayError);
  assert.equal(reused.reason, "REQUEST_ID_REUSED");
});

test("a status with no details at all", () => {
  const error = errorFromConnectError(new ConnectError("deadline", Code.DeadlineExceeded));
  assert.ok(error instanceof DeadlineExceededError);
  assert.equal(error.reason, undefined);
  assert.deepEqual(error.metadata, {});
  assert.deepEqual(error.details, []);
  assert.equal(error.retryDelayMs, undefined);
  assert.deepEqual(error.fieldViolations, []);
  assert.deepEqual(error.quotaViolations, []);
});

test("details given as messages (not bytes) decode too", () => {
  const connectError = new ConnectError("x", Code.NotFound, undefined, [
    { desc: ErrorInfoSchema, value: { reason: "MODEL_NOT_FOUND", domain: "llmgateway", metadata: { model: "m" } } },
  ]);
  const error = errorFromConnectError(connectError);
  assert.ok(error instanceof ModelNotFoundError);
  assert.equal(error.model, "m");
});

test("toGatewayError leaves other errors alone", () => {
  const plain = new TypeError("x");
  assert.equal(toGatewayError(plain), plain);
  const typed = toGatewayError(new ConnectError("x", Code.Unavailable));
  assert.ok(typed instanceof UnavailableError);
  assert.equal(toGatewayError(typed), typed);
});

test("RetryInfo bytes round-trip through the generated schema", () => {
  // Guards the vendored proto: field numbers match what the gateway sends.
  const bytes = toBinary(
    RetryInfoSchema,
    create(RetryInfoSchema, { retryDelay: { seconds: 7n, nanos: 0 } }),
  );
  assert.deepEqual([...bytes], [0x0a, 0x02, 0x08, 0x07]);
});
