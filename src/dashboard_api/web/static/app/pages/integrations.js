// Webhooks (configuration, stats, recent events live), OAuth installations (expiry, missing
// scopes) and data sources (add, remove, re-index, job progress live over `sources`).
import { html, useState } from "../html.js";
import { get, post, put, del } from "../api.js";
import { fmtTime, fmtShort, fmtAgo, fmtInt, fmtPct } from "../format.js";
import { Badge, Card, ErrorBox, Empty, Field, Loading, useChannel, useData } from "../ui.js";

function Webhooks({ admin }) {
  const { data, error, reload, setData } = useData(
    () => Promise.all([get("/api/webhooks"), get("/api/webhooks/stats"), get("/api/webhooks/events", { per_page: 20 })])
      .then(([configs, stats, events]) => ({ configs: configs.items, stats: stats.sources, events: events.items })),
    [],
  );
  const [actionError, setActionError] = useState(null);
  useChannel("webhooks", (event) => {
    if (event.type !== "webhook_event" || !event.event) return;
    setData((d) => d && { ...d, events: [event.event, ...d.events.filter((e) => e.event_id !== event.event.event_id)].slice(0, 20) });
  });
  const toggle = async (config) => {
    setActionError(null);
    try {
      const updated = await put(`/api/webhooks/${config.source}`, { enabled: !config.enabled });
      setData((d) => d && { ...d, configs: d.configs.map((c) => (c.source === updated.source ? updated : c)) });
    } catch (err) {
      setActionError(err);
    }
  };
  let body;
  if (error) body = html`<${ErrorBox} error=${error} retry=${reload} />`;
  else if (!data) body = html`<${Loading} />`;
  else {
    const statOf = (source) => data.stats.find((s) => s.source === source) || {};
    body = html`<${ErrorBox} error=${actionError} />
      <div class="table-wrap"><table><thead><tr><th scope="col">Source</th><th scope="col">State</th>
        <th scope="col">Receive path</th><th scope="col" class="num">Events 24 h</th><th scope="col" class="num">Success 24 h</th>
        <th scope="col">Last received</th><th scope="col">Last failure</th>${admin && html`<th scope="col">Action</th>`}</tr></thead>
      <tbody>${data.configs.map((c) => html`<tr key=${c.source}><th scope="row">${c.source}</th>
        <td><${Badge} value=${c.enabled && c.configured ? "ok" : "offline"} label=${c.enabled ? (c.configured ? "enabled" : "no secret") : "disabled"} /></td>
        <td class="mono small">${c.receive_path}</td><td class="num">${fmtInt(c.events_24h)}</td>
        <td class="num">${fmtPct(c.success_rate_24h)}</td><td>${fmtAgo(c.last_received_at)}</td>
        <td>${statOf(c.source).last_failure_at ? fmtShort(statOf(c.source).last_failure_at) : "—"}</td>
        ${admin && html`<td><button type="button" onClick=${() => toggle(c)}>${c.enabled ? "Disable" : "Enable"}</button></td>`}
      </tr>`)}</tbody></table></div>
      <h3>Recent events</h3>
      ${data.events.length
        ? html`<div class="table-wrap"><table data-testid="webhook-events"><thead><tr><th scope="col">Received</th><th scope="col">Source</th>
            <th scope="col">Event</th><th scope="col">Status</th><th scope="col">Error</th><th scope="col">Task</th></tr></thead>
          <tbody>${data.events.map((e) => html`<tr key=${e.event_id}><td class="nowrap">${fmtShort(e.received_at)}</td><td>${e.source}</td>
            <td>${e.event_type}</td><td><${Badge} value=${e.status} /></td><td class="ellipsis">${e.error || ""}</td>
            <td>${e.task_id ? html`<a href=${`/tasks/${encodeURIComponent(e.task_id)}`}>${e.task_id}</a>` : "—"}</td></tr>`)}</tbody></table></div>`
        : html`<${Empty}>No webhook deliveries yet. Point a provider at a receive path above (with its secret set).<//>`}`;
  }
  return html`<${Card} title="Webhooks" testid="webhooks">${body}<//>`;
}

function OAuth({ admin }) {
  const { data, error, reload } = useData(() => get("/api/oauth/status"), []);
  const [actionError, setActionError] = useState(null);
  const remove = async (inst) => {
    if (!confirm(`Remove the installation for ${inst.organization}?`)) return;
    try {
      await del(`/api/oauth/installations/${encodeURIComponent(inst.installation_id)}`);
      reload();
    } catch (err) {
      setActionError(err);
    }
  };
  let body;
  if (error) body = html`<${ErrorBox} error=${error} retry=${reload} />`;
  else if (!data) body = html`<${Loading} />`;
  else body = html`<${ErrorBox} error=${actionError} />${data.platforms.map((p) => html`<div class="platform" key=${p.platform}>
      <h3>${p.name} <${Badge} value=${p.configured ? "ok" : "offline"} label=${p.configured ? "configured" : "not configured"} /></h3>
      ${p.installations.length
        ? html`<div class="table-wrap"><table><thead><tr><th scope="col">Organization</th><th scope="col">Token</th>
            <th scope="col">Expires</th><th scope="col">Scopes</th><th scope="col">Missing scopes</th><th scope="col">Installed</th>
            ${admin && html`<th scope="col">Action</th>`}</tr></thead>
          <tbody>${p.installations.map((i) => html`<tr key=${i.installation_id}><th scope="row">${i.organization}</th>
            <td><${Badge} value=${i.token_status} label=${i.token_status.replace("_", " ")} /></td>
            <td class="nowrap">${i.token_expires_at ? fmtShort(i.token_expires_at) : "never"}</td>
            <td class="small">${i.scopes.join(", ") || "—"}</td>
            <td class="small">${i.missing_scopes.length ? html`<span class="warn-text">${i.missing_scopes.join(", ")}</span>` : "none"}</td>
            <td class="nowrap">${fmtShort(i.installed_at)}</td>
            ${admin && html`<td><button type="button" class="danger" onClick=${() => remove(i)}>Remove</button></td>`}</tr>`)}</tbody></table></div>`
        : html`<p class="muted">Not installed. An agent records installations with <code>POST /api/oauth/installations</code>.</p>`}
    </div>`)}`;
  return html`<${Card} title="OAuth installations" testid="oauth">${body}<//>`;
}

const SOURCE_FIELDS = {
  github_repo: [["owner", "Owner", true], ["repo", "Repository", true], ["branch", "Branch", false]],
  jira_project: [["site_url", "Site URL (https)", true], ["project_key", "Project key", true], ["jql", "JQL", false]],
  confluence_space: [["site_url", "Site URL (https)", true], ["space_key", "Space key", true]],
};

function AddSource({ onAdded }) {
  const [type, setType] = useState("github_repo");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const config = {};
    for (const [key] of SOURCE_FIELDS[type]) {
      const value = String(form.get(key) || "").trim();
      if (value) config[key] = value;
    }
    const name = String(form.get("name") || "").trim();
    setBusy(true);
    setError(null);
    try {
      const created = await post("/api/sources", { type, config, ...(name ? { name } : {}) });
      event.target.reset();
      onAdded(created);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="add-source" onSubmit=${submit} aria-label="Add a data source">
    <${Field} label="Type"><select name="type" value=${type} onChange=${(e) => setType(e.target.value)}>
      <option value="github_repo">GitHub repository</option><option value="jira_project">Jira project</option>
      <option value="confluence_space">Confluence space</option></select><//>
    ${SOURCE_FIELDS[type].map(([key, label, required]) => html`<${Field} key=${`${type}-${key}`} label=${label + (required ? "" : " (optional)")}>
      <input name=${key} required=${required} /><//>`)}
    <${Field} label="Name (optional)"><input name="name" /><//>
    <button type="submit" class="primary" disabled=${busy}>Add source</button>
    <${ErrorBox} error=${error} />
  </form>`;
}

function Sources({ admin }) {
  const { data, error, reload, setData } = useData(() => get("/api/sources"), []);
  const [actionError, setActionError] = useState(null);
  useChannel("sources", (event) => {
    if (event.type !== "source_job" || !event.job) return;
    const job = event.job;
    setData((d) => d && {
      ...d,
      items: d.items.map((s) => {
        if (s.source_id !== job.source_id) return s;
        const status = { queued: s.status, running: "indexing", succeeded: "ready", failed: "failed" }[job.status] || s.status;
        return { ...s, latest_job: job, status, last_error: job.status === "failed" ? job.error : s.last_error,
          last_indexed_at: job.status === "succeeded" ? job.finished_at : s.last_indexed_at };
      }),
    });
  });
  const run = async (fn) => {
    setActionError(null);
    try {
      await fn();
    } catch (err) {
      setActionError(err);
    }
  };
  const reindex = (s) => run(async () => {
    const job = await post(`/api/sources/${encodeURIComponent(s.source_id)}/reindex`);
    setData((d) => d && { ...d, items: d.items.map((x) => (x.source_id === s.source_id ? { ...x, latest_job: job } : x)) });
  });
  const remove = (s) => {
    if (!confirm(`Remove the source ${s.name}?`)) return;
    run(async () => {
      await del(`/api/sources/${encodeURIComponent(s.source_id)}`);
      setData((d) => d && { ...d, items: d.items.filter((x) => x.source_id !== s.source_id) });
    });
  };
  let body;
  if (error) body = html`<${ErrorBox} error=${error} retry=${reload} />`;
  else if (!data) body = html`<${Loading} />`;
  else body = html`<${ErrorBox} error=${actionError} />
    ${data.items.length
      ? html`<div class="table-wrap"><table data-testid="sources"><thead><tr><th scope="col">Name</th><th scope="col">Type</th>
          <th scope="col">Status</th><th scope="col">Latest job</th><th scope="col">Last indexed</th><th scope="col">Last error</th>
          ${admin && html`<th scope="col">Actions</th>`}</tr></thead>
        <tbody>${data.items.map((s) => html`<tr key=${s.source_id} data-source-id=${s.source_id}><th scope="row">${s.name}</th>
          <td>${s.type}</td><td><${Badge} value=${s.status} /></td>
          <td>${s.latest_job ? html`<${Badge} value=${s.latest_job.status} />
            ${["queued", "running"].includes(s.latest_job.status) && html` <progress max="1" value=${s.latest_job.progress}
              aria-label="Indexing progress"></progress> ${fmtPct(s.latest_job.progress)}`}` : "—"}</td>
          <td class="nowrap">${fmtShort(s.last_indexed_at)}</td><td class="ellipsis">${s.last_error || "—"}</td>
          ${admin && html`<td class="nowrap"><button type="button" onClick=${() => reindex(s)}>Re-index</button>
            <button type="button" class="danger" onClick=${() => remove(s)}>Remove</button></td>`}</tr>`)}</tbody></table></div>`
      : html`<${Empty}>No data sources. ${admin ? "Add one below." : "An admin can add GitHub repositories, Jira projects and Confluence spaces."}<//>`}
    ${admin && html`<h3>Add a source</h3><${AddSource} onAdded=${(s) => setData((d) => d && { ...d, items: [...d.items, s] })} />`}`;
  return html`<${Card} title="Data sources" testid="sources-card">${body}<//>`;
}

export function Integrations({ admin }) {
  return html`<div class="page">
    <h1>Integrations</h1>
    <${Webhooks} admin=${admin} />
    <${OAuth} admin=${admin} />
    <${Sources} admin=${admin} />
  </div>`;
}
