// What every page shares: the operator's token, API calls, element building, formats.

const KEY = "nearcast.console.token";

export function token() {
  return sessionStorage.getItem(KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, detail, body) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
    this.body = body;
  }
}

// Every call sends the token as a bearer token (never in the URL). A 401 signs out.
export async function api(path, { method = "GET", body, json, type } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  let payload = body;
  if (json !== undefined) {
    payload = JSON.stringify(json);
    headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    headers["Content-Type"] = type || "application/yaml";
  }
  const r = await fetch(path, { method, headers, body: payload });
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (r.status === 401) {
    window.dispatchEvent(new CustomEvent("console:unauthorized"));
  }
  if (!r.ok) {
    const detail = data && data.detail !== undefined ? data.detail : text;
    throw new ApiError(r.status, typeof detail === "string" ? detail : JSON.stringify(detail), data);
  }
  return data;
}

// h("td", {class: "x", onclick: f}, "text", child): an element with attributes,
// listeners (on*) and children (strings become text nodes; null and false are skipped).
export function h(tag, attrs = {}, ...children) {
  const ns = tag === "svg" || h.svg.has(tag) ? "http://www.w3.org/2000/svg" : null;
  const el = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
h.svg = new Set(["g", "circle", "rect", "line", "path", "polyline", "text", "title"]);

export function flash(message, isError = false) {
  const el = document.getElementById("flash");
  el.textContent = message;
  el.className = isError ? "error" : "";
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.textContent = ""; }, 6000);
}

export function fmtTime(t) {
  if (t === null || t === undefined) return "—";
  return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
}

export function pct(x) {
  return x === null || x === undefined ? "—" : `${(100 * x).toFixed(1)}%`;
}

export function bar(used, total) {
  const share = total > 0 ? Math.min(1, used / total) : 0;
  return h("span", { class: "bar", title: `${used} / ${total}` },
    h("i", { style: `width:${(100 * share).toFixed(0)}%` }));
}

// Poll ``fn`` every ``ms`` until the returned stop function is called; errors are shown.
export function poll(fn, ms) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try {
      await fn();
    } catch (err) {
      if (!stopped) flash(String(err.message || err), true);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

// The draft policy is shared by the Policy and Simulate pages (this tab only).
export const draft = {
  get: () => sessionStorage.getItem("nearcast.console.draft") || "",
  set: (text) => sessionStorage.setItem("nearcast.console.draft", text),
};
