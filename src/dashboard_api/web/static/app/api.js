// REST calls (docs/api.md): bearer token, problem documents turned into ApiError, and the
// OpenAPI paths this server has (some endpoints arrive in later releases).
import { session, signOut } from "./session.js";

export const EXPIRED =
  "Your token was refused: it is invalid, expired or has been revoked. Sign in with a valid token.";

export class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title || `HTTP ${status}`;
  }
}

export function apiUrl(path, params) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    if (Array.isArray(value)) {
      for (const v of value) url.searchParams.append(key, v);
    } else {
      url.searchParams.set(key, String(value));
    }
  }
  return url;
}

async function problemOf(resp) {
  try {
    const body = await resp.json();
    return new ApiError(resp.status, body.title, body.detail);
  } catch {
    return new ApiError(resp.status, resp.statusText, "");
  }
}

export async function request(path, { method = "GET", params, body, token, signal, raw } = {}) {
  const headers = { Accept: "application/json" };
  const bearer = token ?? session.token;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(apiUrl(path, params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "Network error", "The service does not answer. Is it running?");
  }
  if (resp.status === 401 && token === undefined && session.token) {
    signOut(EXPIRED);
  }
  if (!resp.ok) throw await problemOf(resp);
  if (raw) return resp;
  if (resp.status === 204) return null;
  return resp.json();
}

export const get = (path, params, opts) => request(path, { ...opts, params });
export const post = (path, body, opts) => request(path, { ...opts, method: "POST", body });
export const put = (path, body, opts) => request(path, { ...opts, method: "PUT", body });
export const patch = (path, body, opts) => request(path, { ...opts, method: "PATCH", body });
export const del = (path, opts) => request(path, { ...opts, method: "DELETE" });

// Which endpoints this server has (`/api/budgets`, `/api/tasks/export`, the retry...): the
// page that served us lists them in <meta name="api-paths">; a feature shows only when its
// endpoint is there (no probing request, no 404 in the console).
const API_PATHS = new Set(
  (document.querySelector('meta[name="api-paths"]')?.content || "").split(" ").filter(Boolean),
);

export function hasPath(path) {
  return API_PATHS.has(path);
}

// Fetch with the token and hand the answer to the browser as a file download.
export async function download(path, params, filename) {
  const resp = await request(path, { params, raw: true });
  const blob = await resp.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
