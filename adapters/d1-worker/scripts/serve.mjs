#!/usr/bin/env node
// Run the Worker locally on a real D1 engine (miniflare/workerd), for tests and development.
//
//   node scripts/serve.mjs [--port 0] [--host 127.0.0.1] [--persist DIR] [--database-id ID]
//
// The API token comes from the environment variable D1_WORKER_API_TOKEN (required).
// Without --persist the database lives in memory and disappears with the process.
// Prints one line `D1_WORKER_READY <url>` once requests can be served, then runs until
// SIGTERM/SIGINT or until its standard input closes (so a parent that dies takes it along).

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { Log, LogLevel, Miniflare } from "miniflare";

const here = path.dirname(fileURLToPath(import.meta.url));

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
    persist: { type: "string" },
    "database-id": { type: "string", default: "kmsg-webhook-local" },
    verbose: { type: "boolean", default: false },
  },
});

const token = process.env.D1_WORKER_API_TOKEN;
if (!token) {
  console.error("serve.mjs: set D1_WORKER_API_TOKEN to the bearer token clients must send");
  process.exit(2);
}

const mf = new Miniflare({
  name: "kmsg-webhook-d1",
  modules: true,
  scriptPath: path.join(here, "..", "src", "index.js"),
  compatibilityDate: "2025-01-01",
  d1Databases: { DB: values["database-id"] },
  d1Persist: values.persist ?? false,
  bindings: { API_TOKEN: token },
  host: values.host,
  port: Number(values.port),
  // No network: no cf.json download, no telemetry, no request log noise.
  cf: false,
  telemetry: { enabled: false },
  logRequests: values.verbose,
  log: new Log(values.verbose ? LogLevel.DEBUG : LogLevel.WARN),
});

let stopping = false;
async function stop(code = 0) {
  if (stopping) return;
  stopping = true;
  try {
    await mf.dispose();
  } finally {
    process.exit(code);
  }
}

process.on("SIGTERM", () => stop(0));
process.on("SIGINT", () => stop(0));
process.stdin.on("end", () => stop(0));
process.stdin.on("error", () => stop(0));
process.stdin.resume();

try {
  const url = await mf.ready;
  console.log(`D1_WORKER_READY ${url.href.replace(/\/$/, "")}`);
} catch (err) {
  console.error(`serve.mjs: miniflare failed to start: ${err && err.stack ? err.stack : err}`);
  await stop(1);
}
