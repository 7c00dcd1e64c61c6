// Small shared pieces: loading/empty/error states, badges, the data hook, the live hook.
import { html, useEffect, useState, useRef, useCallback } from "./html.js";
import { live } from "./live.js";

export function Loading({ what = "Loading" }) {
  return html`<p class="muted" role="status">${what}…</p>`;
}

export function ErrorBox({ error, retry }) {
  if (!error) return null;
  let hint = "Try again in a moment.";
  if (error.status === 0) hint = "Check that the service is running, then try again.";
  else if (error.status === 403) hint = "Your role cannot see this; ask an admin for a user or admin token.";
  else if (error.status === 404) hint = "It may have been deleted, or the link is wrong.";
  else if (error.status === 422) hint = "Check the values you entered.";
  else if (error.status === 503) hint = "A dependency of the service is down; it retries by itself.";
  return html`<div class="error" role="alert">
    <strong>${error.title || "Error"}</strong>
    <span>${error.message}</span>
    <span class="muted">${hint}</span>
    ${retry && html`<button type="button" onClick=${retry}>Try again</button>`}
  </div>`;
}

export function Empty({ children }) {
  return html`<div class="empty">${children}</div>`;
}

const STATUS_CLASS = {
  queued: "badge-neutral",
  running: "badge-info",
  completed: "badge-ok",
  succeeded: "badge-ok",
  ready: "badge-ok",
  ok: "badge-ok",
  online: "badge-ok",
  valid: "badge-ok",
  success: "badge-ok",
  resolved: "badge-ok",
  no_expiry: "badge-neutral",
  busy: "badge-info",
  indexing: "badge-info",
  pending: "badge-neutral",
  warning: "badge-warn",
  expiring_soon: "badge-warn",
  degraded: "badge-warn",
  cancelled: "badge-warn",
  offline: "badge-neutral",
  failed: "badge-bad",
  expired: "badge-bad",
  exceeded: "badge-bad",
  firing: "badge-bad",
};

export function Badge({ value, label }) {
  return html`<span class=${`badge ${STATUS_CLASS[value] || "badge-neutral"}`}>${label ?? value}</span>`;
}

// Load data; `deps` re-run it. Returns {data, error, loading, reload, setData}.
export function useData(load, deps) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const seq = useRef(0);
  const run = useCallback(() => {
    const mine = ++seq.current;
    setState((s) => ({ ...s, loading: true, error: null }));
    Promise.resolve()
      .then(load)
      .then(
        (data) => mine === seq.current && setState({ data, error: null, loading: false }),
        (error) => mine === seq.current && setState({ data: null, error, loading: false }),
      );
  }, deps);
  useEffect(() => {
    run();
    return () => {
      seq.current++;
    };
  }, [run]);
  const setData = useCallback((fn) => setState((s) => ({ ...s, data: fn(s.data) })), []);
  return { ...state, reload: run, setData };
}

// Call `fn` every `ms` while mounted and the tab is visible (figures with no live channel).
export function useEvery(ms, fn) {
  const ref = useRef(fn);
  ref.current = fn;
  useEffect(() => {
    const timer = setInterval(() => {
      if (document.visibilityState === "visible") ref.current();
    }, ms);
    return () => clearInterval(timer);
  }, [ms]);
}

// Listen to a channel while the component is mounted.
export function useChannel(channel, handler, deps = []) {
  const ref = useRef(handler);
  ref.current = handler;
  useEffect(() => {
    if (!channel) return undefined;
    return live.subscribe(channel, (event) => ref.current(event));
  }, [channel, ...deps]);
}

export function useLiveState() {
  const [state, setState] = useState(live.state);
  useEffect(() => live.onState(setState), []);
  return state;
}

const LIVE_LABEL = {
  open: "Live",
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  idle: "Offline",
};

export function LiveState() {
  const state = useLiveState();
  return html`<span class=${`live live-${state}`} data-testid="live-state" role="status"
    title="Realtime connection">${LIVE_LABEL[state] || state}</span>`;
}

export function Card({ title, children, testid }) {
  return html`<section class="card" data-testid=${testid}>
    ${title && html`<h2>${title}</h2>`}
    ${children}
  </section>`;
}

export function Stat({ label, value, sub }) {
  return html`<div class="stat"><div class="stat-label">${label}</div>
    <div class="stat-value">${value}</div>${sub && html`<div class="stat-sub">${sub}</div>`}</div>`;
}

export function Field({ label, children }) {
  // The control sits inside its label: every input is labelled without ids.
  return html`<label class="field"><span>${label}</span>${children}</label>`;
}
