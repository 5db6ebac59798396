/**
 * Starts the shared conformance harness (tests/support/conformance_server.py): the real
 * gateway, a fake upstream and an "odd" server, all on 127.0.0.1. Not a test file.
 */

import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** What the harness prints once it serves. */
export interface HarnessInfo {
  gateway: string;
  odd: string;
  api_key: string;
  upstream_state: string;
}

export interface Harness extends HarnessInfo {
  /** The upstream's counters: requests, disconnects, open_connections. */
  upstreamState(): Promise<{ requests: number; disconnects: number; open_connections: number }>;
  /** Close the harness's stdin (it then exits) and wait for it; kills it after 10 s. */
  stop(): Promise<void>;
}

/** The repository root: the first parent of this file holding clients/conformance. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "clients", "conformance", "scenarios.json"))) {
      return dir;
    }
    const parent = resolve(dir, "..");
    if (parent === dir) {
      throw new Error("cannot find the repository root (clients/conformance/scenarios.json)");
    }
    dir = parent;
  }
}

const START_TIMEOUT_MS = 60_000;

export async function startHarness(): Promise<Harness> {
  const root = repoRoot();
  const python = process.env["LLMGATEWAY_PYTHON"] ?? join(root, ".venv", "bin", "python");
  if (!existsSync(python)) {
    throw new Error(`${python} is missing: run \`make\` (it creates .venv) first`);
  }
  const child: ChildProcessWithoutNullStreams = spawn(
    python,
    ["-m", "tests.support.conformance_server"],
    { cwd: root, stdio: ["pipe", "pipe", "pipe"] },
  );
  let stderr = "";
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-16_384);
  });
  const exited = new Promise<number | null>((resolveExit) => {
    child.once("exit", (code) => resolveExit(code));
  });

  const info = await new Promise<HarnessInfo>((resolveInfo, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the conformance harness did not start in time\n${stderr}`));
    }, START_TIMEOUT_MS);
    lines.once("line", (line) => {
      clearTimeout(timer);
      try {
        resolveInfo(JSON.parse(line) as HarnessInfo);
      } catch (error) {
        reject(new Error(`bad harness line ${JSON.stringify(line)}: ${String(error)}`));
      }
    });
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the conformance harness exited (${String(code)}) before serving\n${stderr}`));
    });
  });

  return {
    ...info,
    async upstreamState() {
      const response = await fetch(info.upstream_state);
      if (!response.ok) {
        throw new Error(`upstream_state answered ${response.status}`);
      }
      return (await response.json()) as {
        requests: number;
        disconnects: number;
        open_connections: number;
      };
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) {
        return;
      }
      child.stdin.end();
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
