// The dashboard's shell: sign-in, navigation, theme, and the route table (docs/api.md §18).
import { html, render, useEffect, useLayoutEffect, useState } from "./html.js";
import { session, onSessionChange, signIn, signOut, isAdmin } from "./session.js";
import { get, hasPath, ApiError } from "./api.js";
import { live } from "./live.js";
import { currentLocation, onNavigate, match } from "./router.js";
import { LiveState, Loading, ErrorBox } from "./ui.js";
import { Overview } from "./pages/overview.js";
import { TaskList } from "./pages/tasks.js";
import { TaskPage } from "./pages/task.js";
import { Analytics } from "./pages/analytics.js";
import { Conversations } from "./pages/conversations.js";
import { Integrations } from "./pages/integrations.js";
import { Budgets, Alerts } from "./pages/guards.js";

const ROUTES = [
  ["/", Overview, "Overview"],
  ["/tasks", TaskList, "Tasks"],
  ["/tasks/:id", TaskPage, "Task"],
  ["/analytics", Analytics, "Analytics"],
  ["/conversations", Conversations, "Conversations"],
  ["/conversations/:id", Conversations, "Conversation"],
  ["/integrations", Integrations, "Integrations"],
  ["/budgets", Budgets, "Budgets"],
  ["/alerts", Alerts, "Alerts"],
];

const NAV = [
  ["/", "Overview"],
  ["/tasks", "Tasks"],
  ["/analytics", "Analytics"],
  ["/conversations", "Conversations"],
  ["/integrations", "Integrations"],
];
// Pages of endpoints a server may not have yet: in the menu only when it has them.
const OPTIONAL_NAV = [
  ["/budgets", "Budgets", "/api/budgets"],
  ["/alerts", "Alerts", "/api/alerts"],
];

// --- theme: auto (the system's), light or dark; remembered per browser ------------------
const THEMES = ["auto", "light", "dark"];
function applyTheme(theme) {
  if (theme === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  dispatchEvent(new Event("dashboard-theme"));
}
applyTheme(localStorage.getItem("dashboard.theme") || "auto");

function ThemeSwitch() {
  const [theme, setTheme] = useState(localStorage.getItem("dashboard.theme") || "auto");
  const change = (event) => {
    const value = event.target.value;
    localStorage.setItem("dashboard.theme", value);
    setTheme(value);
    applyTheme(value);
  };
  return html`<label class="theme"><span class="sr-only">Theme</span>
    <select name="theme" onChange=${change} value=${theme} aria-label="Theme">
      ${THEMES.map((t) => html`<option value=${t}>${t === "auto" ? "System theme" : `${t[0].toUpperCase()}${t.slice(1)} theme`}</option>`)}
    </select></label>`;
}

// --- sign-in ---------------------------------------------------------------------------
function SignIn() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const submit = async (event) => {
    event.preventDefault();
    const token = new FormData(event.target).get("token").trim();
    if (!token) {
      setError("Paste a token first.");
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const me = await get("/api/me", null, { token });
      if (me.role === "agent") {
        setError("This is an agent (producer) token. Sign in with a user or admin token.");
      } else {
        signIn(token, me);
      }
    } catch (err) {
      setError(
        err instanceof ApiError && err.status === 401
          ? "This token was refused: it is unknown, expired or revoked."
          : err.message,
      );
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="signin">
    <form class="card" onSubmit=${submit} aria-labelledby="signin-title">
      <h1 id="signin-title">Sign in to the dashboard</h1>
      ${session.notice && html`<p class="notice" role="alert">${session.notice}</p>`}
      <label class="field"><span>API token</span>
        <input name="token" type="password" autocomplete="off" spellcheck="false" required
          placeholder="dash_…" autofocus />
      </label>
      ${error && html`<p class="error-text" role="alert">${error}</p>`}
      <button type="submit" class="primary" disabled=${busy}>${busy ? "Checking…" : "Sign in"}</button>
      <p class="muted small">An admin creates tokens with
        <code>dashboard-api token create --user NAME --role user</code>. The token is kept
        for this browser tab only.</p>
    </form>
  </main>`;
}

// --- shell -----------------------------------------------------------------------------
function Shell({ loc }) {
  const path = loc.path.length > 1 ? loc.path.replace(/\/+$/, "") : loc.path;
  let page = null;
  for (const [pattern, Component, title] of ROUTES) {
    const params = match(pattern, path);
    if (params) {
      page = { Component, params, title };
      break;
    }
  }
  useEffect(() => {
    document.title = page ? `${page.title} · Dashboard` : "Not found · Dashboard";
  }, [page?.title]);
  const extra = OPTIONAL_NAV.filter(([, , api]) => hasPath(api)).map(([href, label]) => [href, label]);
  const active = (href) => (href === "/" ? path === "/" : path === href || path.startsWith(`${href}/`));
  return html`<div class="shell">
    <a class="skip" href="#main">Skip to content</a>
    <header class="top">
      <a class="brand" href="/">Dashboard</a>
      <nav aria-label="Main">
        ${[...NAV, ...extra].map(([href, label]) => html`<a href=${href} aria-current=${active(href) ? "page" : undefined}>${label}</a>`)}
      </nav>
      <div class="who">
        <${LiveState} />
        <span class="muted small" data-testid="whoami">${session.me.user_id} · ${session.me.role}</span>
        <${ThemeSwitch} />
        <button type="button" onClick=${() => signOut()}>Sign out</button>
      </div>
    </header>
    <main id="main" tabindex="-1">
      ${page
        ? html`<${page.Component} key=${path} params=${page.params} query=${loc.query} admin=${isAdmin()} />`
        : html`<div class="card"><h1>Page not found</h1><p>Nothing lives at this address. Go to the <a href="/">overview</a>.</p></div>`}
    </main>
  </div>`;
}

function App() {
  const [, setTick] = useState(0);
  const [loc, setLoc] = useState(currentLocation());
  const [checking, setChecking] = useState(Boolean(session.token && !session.me));
  const [error, setError] = useState(null);
  // Layout effects: subscribed in the same commit as the pages' first requests, so that
  // an answer that signs the tab out (401) cannot arrive before anyone listens.
  useLayoutEffect(() => onSessionChange(() => setTick((t) => t + 1)), []);
  useEffect(
    () =>
      onNavigate((l) => {
        setLoc(l);
        document.getElementById("main")?.focus({ preventScroll: true });
        scrollTo(0, 0);
      }),
    [],
  );
  // A token kept from earlier in this tab: check it is still good before showing anything.
  const check = () => {
    setChecking(true);
    setError(null);
    const token = session.token;
    get("/api/me")
      .then((me) => session.token === token && signIn(token, me))
      .catch((err) => {
        if (!(err instanceof ApiError && err.status === 401)) setError(err);
      })
      .finally(() => setChecking(false));
  };
  useEffect(() => {
    if (session.token && !session.me) check();
    // Signed in earlier in this tab: the page renders at once and the token is checked
    // alongside (a refused token signs the page out with the reason).
    else if (session.token) {
      const token = session.token;
      get("/api/me").then((me) => session.token === token && signIn(token, me), () => {});
    }
  }, []);
  useEffect(() => {
    if (session.token && session.me) live.connect();
    else live.disconnect();
  });
  if (error) return html`<main class="signin"><${ErrorBox} error=${error} retry=${check} /></main>`;
  if (checking) return html`<main class="signin"><${Loading} what="Checking your token" /></main>`;
  if (!session.token || !session.me) return html`<${SignIn} />`;
  return html`<${Shell} loc=${loc} />`;
}

const root = document.getElementById("app");
root.textContent = ""; // the "Loading…" placeholder
render(html`<${App} />`, root);
