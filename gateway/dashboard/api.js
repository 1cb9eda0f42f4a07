// The public REST API, called with the signed-in key as `Authorization: Bearer <key>`. The key
// lives in sessionStorage only (gone when the tab closes), never in a URL.

const STORAGE_KEY = "herald.dashboard.apiKey";

export class ApiError extends Error {
  /**
   * kind: "auth" (401: the key is not accepted), "notfound" (404), "client" (another 4xx: the
   * request is wrong, retrying will not help), "server" (5xx) or "network" (no answer): these
   * two are worth retrying.
   */
  constructor(status, message, kind) {
    super(message);
    this.status = status;
    this.kind = kind;
  }

  get retryable() {
    return this.kind === "server" || this.kind === "network";
  }
}

export function apiKey() {
  return sessionStorage.getItem(STORAGE_KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(STORAGE_KEY, key);
  else sessionStorage.removeItem(STORAGE_KEY);
}

function kindOf(status) {
  if (status === 401) return "auth";
  if (status === 404) return "notfound";
  if (status >= 500) return "server";
  return "client";
}

/** Called with every 401, so the app can ask for a key again. */
let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

/**
 * The JSON answer of `path` (e.g. "/api/v1/triggers"), with `query` as the query string.
 * Throws ApiError with the API's own message.
 */
export async function api(path, { method = "GET", query, body, key = apiKey(), signal } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null && value !== "") params.set(name, value);
    }
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  const headers = { Accept: "application/json", Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "Herald could not be reached: check that the platform is running and your connection.", "network");
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message = (data && typeof data.message === "string" && data.message) || `${response.status} ${response.statusText}`;
    const error = new ApiError(response.status, message, kindOf(response.status));
    if (error.kind === "auth" && key === apiKey()) onUnauthorized(error);
    throw error;
  }
  return data;
}
