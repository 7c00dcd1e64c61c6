// Budgets (docs/api.md §14) and alerts (§15): shown when the server has those endpoints.
import { html } from "../html.js";
import { get } from "../api.js";
import { fmtUsd, fmtTime, fmtNum } from "../format.js";
import { Badge, Card, ErrorBox, Empty, Loading, useChannel, useData } from "../ui.js";

function Unavailable({ what }) {
  return html`<${Empty}>This server has no ${what} yet (its API answers 404). Upgrade the service to use them.<//>`;
}

export function Budgets() {
  const { data, error, reload, setData } = useData(() => get("/api/budgets"), []);
  useChannel("budgets", (event) => {
    if (event.type !== "budget_state" || !event.budget) return;
    setData((d) => d && { ...d, items: d.items.map((b) => (b.budget_id === event.budget.budget_id ? event.budget : b)) });
  });
  let body;
  if (error?.status === 404) body = html`<${Unavailable} what="budgets" />`;
  else if (error) body = html`<${ErrorBox} error=${error} retry=${reload} />`;
  else if (!data) body = html`<${Loading} />`;
  else if (!data.items.length) body = html`<${Empty}>No budgets. An admin sets one with <code>PUT /api/budgets/ID</code>.<//>`;
  else body = html`<div class="table-wrap"><table><thead><tr><th scope="col">Budget</th><th scope="col">Scope</th>
      <th scope="col">State</th><th scope="col">Spent</th><th scope="col" class="num">Limit</th><th scope="col">Period</th>
      <th scope="col">Action</th></tr></thead>
    <tbody>${data.items.map((b) => html`<tr key=${b.budget_id}><th scope="row">${b.name}</th>
      <td class="small">${Object.entries(b.scope || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "whole fleet"}</td>
      <td><${Badge} value=${b.state} />${b.held ? html` <span class="badge badge-bad" title="Claims in scope hand out no work">holding</span>` : null}</td>
      <td><meter min="0" max=${b.limit_usd} value=${Math.min(b.spent_usd, b.limit_usd)} aria-label=${`${b.name} spent`}></meter>
        ${fmtUsd(b.spent_usd)}</td><td class="num">${fmtUsd(b.limit_usd)}</td>
      <td class="small">${b.period} (${b.tz}) · ${fmtTime(b.period_start)} – ${fmtTime(b.period_end)}</td>
      <td>${b.action.replaceAll("_", " ")}</td></tr>`)}</tbody></table></div>`;
  return html`<div class="page"><h1>Budgets</h1><${Card}>${body}<//></div>`;
}

export function Alerts() {
  const { data, error, reload, setData } = useData(
    () => Promise.all([get("/api/alerts", { per_page: 100 }), get("/api/alerts/rules")])
      .then(([alerts, rules]) => ({ alerts: alerts.items, rules: rules.items })),
    [],
  );
  useChannel("alerts", (event) => {
    if (event.type !== "alert" || !event.alert) return;
    setData((d) => d && { ...d, alerts: [event.alert, ...d.alerts.filter((a) => a.alert_id !== event.alert.alert_id)] });
  });
  let body;
  if (error?.status === 404) body = html`<${Unavailable} what="alerts" />`;
  else if (error) body = html`<${ErrorBox} error=${error} retry=${reload} />`;
  else if (!data) body = html`<${Loading} />`;
  else {
    const ruleName = (id) => data.rules.find((r) => r.rule_id === id)?.name || id;
    body = html`<h2>Alerts</h2>${data.alerts.length
      ? html`<div class="table-wrap"><table><thead><tr><th scope="col">State</th><th scope="col">Rule</th><th scope="col">Summary</th>
          <th scope="col" class="num">Value</th><th scope="col" class="num">Threshold</th><th scope="col">Started</th><th scope="col">Resolved</th></tr></thead>
        <tbody>${data.alerts.map((a) => html`<tr key=${a.alert_id}><td><${Badge} value=${a.state} /></td><td>${ruleName(a.rule_id)}</td>
          <td>${a.summary}</td><td class="num">${fmtNum(a.value)}</td><td class="num">${fmtNum(a.threshold)}</td>
          <td>${fmtTime(a.started_at)}</td><td>${fmtTime(a.resolved_at)}</td></tr>`)}</tbody></table></div>`
      : html`<${Empty}>No alerts have fired.<//>`}
      <h2>Rules</h2>${data.rules.length
      ? html`<div class="table-wrap"><table><thead><tr><th scope="col">Rule</th><th scope="col">Kind</th><th scope="col" class="num">Threshold</th>
          <th scope="col" class="num">Window</th><th scope="col">Enabled</th></tr></thead>
        <tbody>${data.rules.map((r) => html`<tr key=${r.rule_id}><th scope="row">${r.name}</th><td>${r.kind}</td>
          <td class="num">${fmtNum(r.threshold)}</td><td class="num">${r.window_minutes} min</td><td>${r.enabled ? "yes" : "no"}</td></tr>`)}</tbody></table></div>`
      : html`<${Empty}>No alert rules. An admin adds them with <code>PUT /api/alerts/rules/ID</code>.<//>`}`;
  }
  return html`<div class="page"><h1>Alerts</h1><${Card}>${body}<//></div>`;
}
