/**
 * The shared conformance scenarios (clients/conformance/scenarios.json) against the
 * harness gateway, plus a few client checks against the same gateway.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  CancelledError,
  ContextWindowExceededError,
  CostLimitExceededError,
  createClient,
  DeadlineExceededError,
  GatewayError,
  InvalidRequestError,
  ModelNotFoundError,
  UnauthenticatedError,
  UnavailableError,
  type Completion,
  type GatewayClient,
  type StreamEvent,
} from "../src/index.js";
import { repoRoot, startHarness, type Harness } from "./harness.js";

interface Expect {
  ok?: boolean;
  content?: string;
  stream?: boolean;
  usage_positive?: boolean;
  cost_positive?: boolean;
  code?: string;
  reason?: string;
  error?: string;
  metadata?: Record<string, string>;
  metadata_keys?: string[];
  field_violations?: string[];
  retry_delay_s?: number;
  quota_failure?: boolean;
  upstream_disconnect?: boolean;
  unknown_details?: boolean;
}

interface Scenario {
  name: string;
  rpc: "Complete" | "StreamComplete";
  server?: "gateway" | "odd";
  model: string;
  prompt: string;
  max_tokens?: number;
  temperature?: number;
  timeout_ms?: number;
  api_key?: string;
  cancel_after_deltas?: number;
  expect: Expect;
}

/** The neutral error names of scenarios.json, mapped to this client's classes. */
const ERROR_CLASSES: Record<string, new (...args: never[]) => GatewayError> = {
  Unauthenticated: UnauthenticatedError,
  ModelNotFound: ModelNotFoundError,
  InvalidRequest: InvalidRequestError,
  ContextWindowExceeded: ContextWindowExceededError,
  CostLimitExceeded: CostLimitExceededError,
  Unavailable: UnavailableError,
  DeadlineExceeded: DeadlineExceededError,
  Cancelled: CancelledError,
};

const scenarios = (
  JSON.parse(
    readFileSync(join(repoRoot(), "clients", "conformance", "scenarios.json"), "utf8"),
  ) as { scenarios: Scenario[] }
).scenarios;

/** What one call produced. */
interface Outcome {
  completion?: Completion;
  events?: StreamEvent[];
  error?: unknown;
}

async function run(client: GatewayClient, s: Scenario): Promise<Outcome> {
  const request = {
    model: s.model,
    messages: s.prompt,
    maxTokens: s.max_tokens,
    temperature: s.temperature,
  };
  const timeoutMs = s.timeout_ms;
  try {
    if (s.rpc === "Complete") {
      return { completion: await client.complete(request, { timeoutMs }) };
    }
    const controller = new AbortController();
    const events: StreamEvent[] = [];
    let deltas = 0;
    try {
      for await (const event of client.stream(request, { timeoutMs, signal: controller.signal })) {
        events.push(event);
        if (event.type === "delta") {
          deltas += 1;
          if (s.cancel_after_deltas !== undefined && deltas >= s.cancel_after_deltas) {
            controller.abort();
          }
        }
      }
    } catch (error) {
      return { events, error };
    }
    return { events };
  } catch (error) {
    return { error };
  }
}

function checkSuccess(s: Scenario, outcome: Outcome): void {
  const e = s.expect;
  assert.equal(outcome.error, undefined, `unexpected error: ${String(outcome.error)}`);
  let completion: Completion;
  if (s.rpc === "StreamComplete") {
    const events = outcome.events ?? [];
    const results = events.filter((ev) => ev.type === "result");
    assert.equal(results.length, 1, "exactly one result");
    const last = events[events.length - 1];
    assert.ok(last !== undefined && last.type === "result", "the result comes last");
    completion = last.completion;
    if (e.stream) {
      const deltas = events.filter((ev) => ev.type === "delta");
      assert.ok(deltas.length > 0, "at least one delta before the result");
      assert.equal(deltas.map((d) => d.text).join(""), completion.content);
    }
  } else {
    assert.ok(outcome.completion !== undefined);
    completion = outcome.completion;
  }
  if (e.content !== undefined) {
    assert.equal(completion.content, e.content);
  }
  if (e.usage_positive) {
    assert.ok(completion.usage !== undefined);
    assert.ok(completion.usage.inputTokenCount > 0n, "input tokens > 0");
    assert.ok(completion.usage.outputTokenCount > 0n, "output tokens > 0");
  }
  if (e.cost_positive) {
    assert.ok(completion.cost !== undefined);
    assert.ok(completion.cost.totalNanoUsd > 0n, "cost > 0");
  }
}

function checkError(s: Scenario, outcome: Outcome): void {
  const e = s.expect;
  const error = outcome.error;
  assert.ok(error !== undefined, "the call should fail");
  assert.ok(error instanceof GatewayError, `not a GatewayError: ${String(error)}`);
  if (e.error !== undefined) {
    const cls = ERROR_CLASSES[e.error];
    assert.ok(cls !== undefined, `unmapped error name ${e.error}`);
    assert.ok(error instanceof cls, `${error.name} is not a ${cls.name}`);
  }
  if (e.code !== undefined) {
    assert.equal(error.codeName, e.code);
  }
  if (e.reason !== undefined) {
    assert.equal(error.reason, e.reason);
  }
  for (const [key, value] of Object.entries(e.metadata ?? {})) {
    assert.equal(error.metadata[key], value, `metadata ${key}`);
  }
  for (const key of e.metadata_keys ?? []) {
    assert.ok(key in error.metadata, `metadata key ${key} in ${JSON.stringify(error.metadata)}`);
  }
  if (e.field_violations !== undefined) {
    const fields = error.fieldViolations.map((v) => v.field);
    for (const field of e.field_violations) {
      assert.ok(fields.includes(field), `field violation ${field} in ${JSON.stringify(fields)}`);
    }
  }
  if (e.retry_delay_s !== undefined) {
    assert.equal(error.retryDelayMs, e.retry_delay_s * 1000);
  }
  if (e.quota_failure) {
    assert.ok(error.hasDetail("google.rpc.QuotaFailure"), "a QuotaFailure detail");
  }
  if (e.unknown_details) {
    assert.ok(error.unknownDetailTypes.length > 0, "an unknown detail type was seen");
  }
  if (error instanceof ContextWindowExceededError) {
    assert.ok((error.inputTokens ?? 0) > 0);
    assert.ok((error.contextWindow ?? 0) > 0);
  }
  if (s.rpc === "StreamComplete" && s.cancel_after_deltas !== undefined) {
    const deltas = (outcome.events ?? []).filter((ev) => ev.type === "delta").length;
    assert.ok(deltas >= s.cancel_after_deltas, "deltas arrived before the cancel");
    assert.ok(
      (outcome.events ?? []).every((ev) => ev.type === "delta"),
      "no result after a cancel",
    );
  }
}

async function waitForDisconnect(harness: Harness, before: number): Promise<void> {
  const deadline = Date.now() + 2_000;
  let disconnects = before;
  while (Date.now() < deadline) {
    disconnects = (await harness.upstreamState()).disconnects;
    if (disconnects > before) {
      return;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.fail(`the upstream saw no disconnect within 2 s (${before} -> ${disconnects})`);
}

describe("conformance", () => {
  let harness: Harness;
  const clients: GatewayClient[] = [];

  before(async () => {
    harness = await startHarness();
  });

  after(async () => {
    for (const client of clients) {
      client.close();
    }
    await harness?.stop();
  });

  for (const s of scenarios) {
    test(s.name, async () => {
      const client = createClient({
        address: s.server === "odd" ? harness.odd : harness.gateway,
        apiKey: s.api_key ?? harness.api_key,
        insecure: true,
      });
      clients.push(client);
      const before = s.expect.upstream_disconnect
        ? (await harness.upstreamState()).disconnects
        : 0;
      const started = Date.now();
      const outcome = await run(client, s);
      const elapsed = Date.now() - started;
      if (s.expect.ok) {
        checkSuccess(s, outcome);
      } else {
        checkError(s, outcome);
      }
      if (s.timeout_ms !== undefined) {
        assert.ok(elapsed < s.timeout_ms + 2_000, `the deadline held (${elapsed} ms)`);
      }
      if (s.expect.upstream_disconnect) {
        await waitForDisconnect(harness, before);
      }
    });
  }

  test("countTokens and listModels", async () => {
    const client = createClient({ address: harness.gateway, apiKey: harness.api_key, insecure: true });
    clients.push(client);
    const count = await client.countTokens({ model: "ok", messages: "Say hello." });
    assert.ok(count.inputTokenCount > 0n);
    assert.equal(count.contextWindowTokenCount, 128000n);
    const models = await client.listModels();
    const names = models.map((m) => m.name);
    assert.ok(names.includes("ok") && names.includes("tiny"), JSON.stringify(names));
    assert.deepEqual(names, [...names].sort());
  });

  test("a missing key is UnauthenticatedError", async () => {
    const client = createClient({ address: harness.gateway, insecure: true });
    clients.push(client);
    await assert.rejects(client.listModels(), UnauthenticatedError);
  });

  test("an already aborted signal fails fast with CancelledError", async () => {
    const client = createClient({ address: harness.gateway, apiKey: harness.api_key, insecure: true });
    clients.push(client);
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(
      client.complete({ model: "ok", messages: "Hi" }, { signal: controller.signal }),
      CancelledError,
    );
  });

  test("aborting a unary call cancels it", async () => {
    const client = createClient({ address: harness.gateway, apiKey: harness.api_key, insecure: true });
    clients.push(client);
    const before = (await harness.upstreamState()).disconnects;
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 300);
    await assert.rejects(
      client.complete({ model: "stall", messages: "Hi" }, { signal: controller.signal }),
      CancelledError,
    );
    await waitForDisconnect(harness, before);
  });

  test("the client's default deadline applies to unary calls", async () => {
    const client = createClient({
      address: harness.gateway,
      apiKey: harness.api_key,
      insecure: true,
      timeoutMs: 400,
    });
    clients.push(client);
    await assert.rejects(client.complete({ model: "stall", messages: "Hi" }), DeadlineExceededError);
  });

  test("leaving a stream early cancels the call", async () => {
    const client = createClient({ address: harness.gateway, apiKey: harness.api_key, insecure: true });
    clients.push(client);
    const before = (await harness.upstreamState()).disconnects;
    for await (const event of client.stream({ model: "slow", messages: "Hi", maxTokens: 2000 })) {
      assert.equal(event.type, "delta");
      break;
    }
    await waitForDisconnect(harness, before);
  });

  test("no gateway listening is UnavailableError", async () => {
    const client = createClient({ address: "127.0.0.1:1", insecure: true, timeoutMs: 5_000 });
    clients.push(client);
    await assert.rejects(client.listModels(), UnavailableError);
  });
});
