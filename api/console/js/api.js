// The API, as the console uses it: the token from sessionStorage sent as a bearer header (never
// in a URL, except the WebSocket's, which browsers cannot give headers), JSON in and out, the
// API's own error messages shown as they are.

const KEY = "gito.session";

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY)) || {};
  } catch {
    return {};
  }
}

export function saveSession(value) {
  sessionStorage.setItem(KEY, JSON.stringify(value));
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A request; `query` values that are null/undefined/"" are left out. */
export async function api(method, path, { query, body, token } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
  }
  const headers = { Authorization: `Bearer ${token || session().token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    if (response.status === 401 && !token) window.dispatchEvent(new Event("gito:signed-out"));
    throw new ApiError(response.status, error.code, `${response.status}: ${error.message || response.statusText}`);
  }
  return data;
}

/** A path under the signed-in tenant. */
export function t(path) {
  return `/tenants/${encodeURIComponent(session().tenant)}${path}`;
}

/** Every item of a small list (device types, sites, ...), a page of 1000 at a time. */
export async function all(path, cap = 5000) {
  const items = [];
  let cursor;
  do {
    const page = await api("GET", path, { query: { limit: 1000, cursor } });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < cap);
  return items;
}

/**
 * The tenant's live events, reconnecting after a drop; `onEvent(event)` per message,
 * `onState("live" | "reconnecting")`. Returns a function that closes it for good.
 */
export function live({ deviceId, onEvent, onState }) {
  let socket;
  let closed = false;
  let delay = 500;
  const open = () => {
    const { token } = session();
    const url = new URL(t("/ws"), location.origin);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", token);
    if (deviceId) url.searchParams.set("device_id", deviceId);
    socket = new WebSocket(url);
    socket.addEventListener("open", () => {
      delay = 500;
      onState && onState("live");
    });
    socket.addEventListener("message", (m) => {
      try {
        onEvent(JSON.parse(m.data));
      } catch (e) {
        console.error(e);
      }
    });
    socket.addEventListener("close", () => {
      if (closed) return;
      onState && onState("reconnecting");
      setTimeout(() => !closed && open(), delay);
      delay = Math.min(delay * 2, 10000);
    });
  };
  open();
  return () => {
    closed = true;
    socket && socket.close();
  };
}
