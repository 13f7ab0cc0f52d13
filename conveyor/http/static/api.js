// The REST API: the token for this tab, JSON requests with the bearer header, errors as
// ApiError. No cookies: the token lives in sessionStorage and travels only in the header.

const KEY = "conveyor.token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

/** Told when the broker stops accepting the token (revoked, expired). */
export const authEvents = new EventTarget();

export function authHeaders(value = token.get()) {
  return { Authorization: `Bearer ${value ?? ""}` };
}

/** `await api("/api/jobs", {method: "POST", body: {...}})`: the JSON answer, or ApiError. */
export async function api(path, { method = "GET", body, query, tokenValue, signal } = {}) {
  const headers = { ...authHeaders(tokenValue), Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const url = query ? `${path}?${new URLSearchParams(clean(query))}` : path;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network", "the broker cannot be reached");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const failure = new ApiError(
      response.status,
      error.code || "http_error",
      error.message || `HTTP ${response.status}`,
      error.field,
    );
    if (response.status === 401 && tokenValue === undefined) {
      authEvents.dispatchEvent(new CustomEvent("unauthorized", { detail: failure }));
    }
    throw failure;
  }
  return data;
}

/** A query without its empty values. */
function clean(query) {
  const out = [];
  for (const [key, value] of Object.entries(query)) {
    if (Array.isArray(value)) value.forEach((v) => out.push([key, v]));
    else if (value !== null && value !== undefined && value !== "") out.push([key, value]);
  }
  return out;
}

/** What to show a person for an error. */
export function describe(error) {
  if (!(error instanceof ApiError)) return String(error.message || error);
  if (error.status === 403) return `Not allowed with this token: ${error.message}.`;
  return error.field ? `${error.field}: ${error.message}` : error.message;
}

/** `load = serial(fn)`: one call of `fn` at a time; calls made meanwhile make one more
 * call once it is done, so the last answer shown is never older than the last ask. */
export function serial(fn) {
  let running = null;
  let again = false;
  const run = async () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await fn();
      } while (again);
    })();
    try {
      await running;
    } finally {
      running = null;
    }
  };
  return run;
}
