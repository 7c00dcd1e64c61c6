// One WebSocket per tab (docs/api.md §10), shared by every view. It authenticates with the
// subprotocols `bearer, <token>` (the token stays out of the URL), reconnects with backoff,
// and on each (re)connect subscribes again to every channel in use; a task channel resumes
// with `since_seq` = the last seq its consumer has, so a reconnect loses and repeats nothing.
import { session, signOut } from "./session.js";
import { EXPIRED } from "./api.js";

const CLOSE_UNAUTHORIZED = 4401;

class Live {
  constructor() {
    this.ws = null;
    this.state = "idle"; // idle | connecting | open | reconnecting
    this.channels = new Map(); // channel -> {handlers: Set, since: () => number|null}
    this.stateListeners = new Set();
    this.retry = 0;
    this.timer = null;
  }

  setState(state) {
    this.state = state;
    for (const fn of [...this.stateListeners]) fn(state);
  }

  onState(fn) {
    this.stateListeners.add(fn);
    fn(this.state);
    return () => this.stateListeners.delete(fn);
  }

  connect() {
    if (this.ws || !session.token) return;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    const ws = new WebSocket(url, ["bearer", session.token]);
    this.ws = ws;
    this.setState(this.retry ? "reconnecting" : "connecting");
    ws.onopen = () => {
      this.retry = 0;
      this.setState("open");
      for (const channel of this.channels.keys()) this.sendSubscribe(channel);
    };
    ws.onmessage = (event) => this.dispatch(event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (event.code === CLOSE_UNAUTHORIZED) {
        this.setState("idle");
        signOut(EXPIRED);
        return;
      }
      if (!session.token) {
        this.setState("idle");
        return;
      }
      this.retry += 1;
      this.setState("reconnecting");
      const wait = Math.min(5000, 250 * 2 ** Math.min(this.retry, 5)) * (0.75 + Math.random() / 2);
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.connect(), wait);
    };
  }

  disconnect() {
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    this.retry = 0;
    if (ws) ws.close(1000);
    this.setState("idle");
  }

  // For tests and the benchmark: drop the socket as a network failure would.
  drop() {
    if (this.ws) this.ws.close(4000, "dropped by the page");
  }

  sendSubscribe(channel) {
    const entry = this.channels.get(channel);
    if (!entry || !this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const message = { type: "subscribe", channel };
    const since = entry.since ? entry.since() : null;
    if (since !== null && since !== undefined) message.since_seq = since;
    this.ws.send(JSON.stringify(message));
  }

  dispatch(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    const entry = event.channel ? this.channels.get(event.channel) : null;
    if (entry) for (const fn of [...entry.handlers]) fn(event);
  }

  // Listen to a channel; `since` (task channels) gives the seq to resume after.
  // Returns the function that stops listening.
  subscribe(channel, handler, since = null) {
    let entry = this.channels.get(channel);
    if (!entry) {
      entry = { handlers: new Set(), since };
      this.channels.set(channel, entry);
      entry.handlers.add(handler);
      this.connect();
      this.sendSubscribe(channel);
    } else {
      entry.handlers.add(handler);
      if (since) entry.since = since;
    }
    return () => {
      const current = this.channels.get(channel);
      if (!current) return;
      current.handlers.delete(handler);
      if (current.handlers.size === 0) {
        this.channels.delete(channel);
        if (this.ws && this.ws.readyState === WebSocket.OPEN) {
          this.ws.send(JSON.stringify({ type: "unsubscribe", channel }));
        }
      }
    };
  }
}

export const live = new Live();
window.__dashboardLive = live; // a hook for the browser tests and the benchmark
