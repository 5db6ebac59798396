/**
 * Stream a completion from the gateway, printing the deltas as they arrive, then the
 * usage and the cost.
 *
 *   make run                                   # in the repo root: the gateway on 127.0.0.1:50051
 *   cd clients/typescript && npm run build
 *   node dist/examples/stream.js "Tell me a story."
 *
 * Environment: LLMGATEWAY_ADDR (default 127.0.0.1:50051), LLMGATEWAY_API_KEY (none by
 * default: `make run` serves an anonymous tenant), LLMGATEWAY_MODEL (default "default").
 * In your own code, import from "@llmgateway/client" instead of "../src/index.js".
 */

import { createClient, FinishReason, formatNanoUsd, GatewayError } from "../src/index.js";

const address = process.env["LLMGATEWAY_ADDR"] ?? "127.0.0.1:50051";
const apiKey = process.env["LLMGATEWAY_API_KEY"];
const model = process.env["LLMGATEWAY_MODEL"] ?? "default";
const prompt = process.argv.slice(2).join(" ") || "Say hello in a few words.";

const client = createClient({ address, apiKey, insecure: true, timeoutMs: 30_000 });

// Ctrl-C cancels the call (the gateway then stops the upstream request).
const controller = new AbortController();
process.once("SIGINT", () => controller.abort());

try {
  for await (const event of client.stream(
    { model, messages: prompt, maxTokens: 256 },
    { signal: controller.signal },
  )) {
    if (event.type === "delta") {
      process.stdout.write(event.text);
      continue;
    }
    const { usage, cost, provider, upstreamModel, finishReason } = event.completion;
    process.stdout.write("\n\n");
    console.log(`served by ${provider}/${upstreamModel}, finish ${FinishReason[finishReason]}`);
    console.log(
      `usage: ${usage?.inputTokenCount ?? 0n} input, ${usage?.outputTokenCount ?? 0n} output,` +
        ` ${usage?.cachedInputTokenCount ?? 0n} cached input tokens`,
    );
    console.log(`cost: $${formatNanoUsd(cost?.totalNanoUsd ?? 0n)} (prices ${cost?.priceVersion ?? "?"})`);
  }
} catch (error) {
  if (error instanceof GatewayError) {
    console.error(`\n${error.name} [${error.codeName}${error.reason ? ` ${error.reason}` : ""}]: ${error.message}`);
    if (error.retryDelayMs !== undefined) {
      console.error(`retry in ${error.retryDelayMs} ms`);
    }
    process.exitCode = 1;
  } else {
    throw error;
  }
} finally {
  client.close();
}
