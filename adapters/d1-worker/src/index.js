// A D1 binding over HTTP, speaking the Cloudflare D1 REST API's /query and /raw contract.
//
//   POST /client/v4/accounts/:account/d1/database/:database/query   rows as objects
//   POST /client/v4/accounts/:account/d1/database/:database/raw     {columns, rows}
//   Authorization: Bearer <API_TOKEN>
//   body: {sql, params?}  or  {batch: [{sql, params?}, ...]}  (a batch runs atomically)
//
// Answers {success, errors, messages, result: [{results, success, meta}]} like the REST API.
// Bindings: DB (D1, required), API_TOKEN (secret, required), ACCOUNT_ID and DATABASE_ID
// (optional vars: when set, requests naming another account or database get a 404).

const ROUTE = /^\/client\/v4\/accounts\/([^/]+)\/d1\/database\/([^/]+)\/(query|raw)\/?$/;

// Error codes in the REST API's style (7500 is what D1 answers for a failed statement).
const CODE_AUTH = 10000;
const CODE_BAD_REQUEST = 7400;
const CODE_NOT_FOUND = 7404;
const CODE_METHOD = 7405;
const CODE_SQL = 7500;
const CODE_CONFIG = 7000;

export default {
  async fetch(request, env) {
    // Read the whole body before answering anything: workerd closes the keep-alive
    // connection when a response goes out while request bytes are still unread.
    let text = "";
    try {
      text = await request.text();
    } catch {
      return failure(400, CODE_BAD_REQUEST, "Could not read the request body");
    }

    const match = ROUTE.exec(new URL(request.url).pathname);
    if (!match) {
      return failure(404, CODE_NOT_FOUND, "No route for that URI");
    }
    if (request.method !== "POST") {
      return failure(405, CODE_METHOD, "Method not allowed: use POST", { Allow: "POST" });
    }
    if (typeof env.API_TOKEN !== "string" || env.API_TOKEN.length === 0) {
      // Fail closed: a Worker deployed without its secret serves nobody.
      return failure(500, CODE_CONFIG, "The API_TOKEN secret is not set on this Worker");
    }
    if (!(await authorized(request.headers.get("Authorization"), env.API_TOKEN))) {
      return failure(401, CODE_AUTH, "Authentication error");
    }
    const [, account, database, mode] = match;
    if (
      (env.ACCOUNT_ID && decodeURIComponent(account) !== env.ACCOUNT_ID) ||
      (env.DATABASE_ID && decodeURIComponent(database) !== env.DATABASE_ID)
    ) {
      return failure(404, CODE_NOT_FOUND, "Database not found");
    }

    let queries;
    try {
      queries = parseQueries(text);
    } catch (err) {
      return failure(400, CODE_BAD_REQUEST, err.message);
    }

    let results;
    try {
      const statements = queries.map((q) => env.DB.prepare(q.sql).bind(...q.params));
      // batch() runs the statements as one implicit transaction: all or nothing.
      results = await env.DB.batch(statements);
    } catch (err) {
      return failure(400, CODE_SQL, sqlErrorMessage(err));
    }

    const result = results.map((r) => ({
      results: mode === "raw" ? toRaw(r.results ?? []) : (r.results ?? []),
      success: r.success !== false,
      meta: r.meta ?? {},
    }));
    return json(200, { result, errors: [], messages: [], success: true });
  },
};

function parseQueries(text) {
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new Error("The request body is not valid JSON");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new Error("The request body must be a JSON object");
  }
  const items = Object.hasOwn(body, "batch") ? body.batch : [body];
  if (!Array.isArray(items) || items.length === 0) {
    throw new Error("batch must be a non-empty array of {sql, params}");
  }
  return items.map((item, i) => {
    if (item === null || typeof item !== "object" || typeof item.sql !== "string") {
      throw new Error(`Query ${i}: sql must be a string`);
    }
    if (item.sql.trim().length === 0) {
      throw new Error(`Query ${i}: sql is empty`);
    }
    const params = item.params ?? [];
    if (!Array.isArray(params)) {
      throw new Error(`Query ${i}: params must be an array`);
    }
    for (const value of params) {
      const kind = typeof value;
      if (!(value === null || kind === "string" || kind === "number" || kind === "boolean")) {
        throw new Error(`Query ${i}: params may hold only strings, numbers, booleans and null`);
      }
    }
    return { sql: item.sql, params };
  });
}

// Rows as objects -> {columns, rows}. A batch result carries no column list of its own, so an
// empty result has no columns (and duplicate column names collapse, as they do in objects).
function toRaw(rows) {
  const columns = rows.length > 0 ? Object.keys(rows[0]) : [];
  return { columns, rows: rows.map((row) => columns.map((c) => row[c])) };
}

function sqlErrorMessage(err) {
  const cause = err && err.cause && err.cause.message ? `: ${err.cause.message}` : "";
  const message = err && err.message ? err.message : String(err);
  return message.includes(cause) ? message : message + cause;
}

async function authorized(header, token) {
  if (typeof header !== "string" || !header.startsWith("Bearer ")) {
    return false;
  }
  // Compare digests in constant time so neither length nor content leaks through timing.
  const encoder = new TextEncoder();
  const [given, expected] = await Promise.all([
    crypto.subtle.digest("SHA-256", encoder.encode(header.slice("Bearer ".length).trim())),
    crypto.subtle.digest("SHA-256", encoder.encode(token)),
  ]);
  return crypto.subtle.timingSafeEqual(given, expected);
}

function failure(status, code, message, headers = {}) {
  return json(status, { result: [], success: false, errors: [{ code, message }], messages: [] }, headers);
}

function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json", ...headers },
  });
}
