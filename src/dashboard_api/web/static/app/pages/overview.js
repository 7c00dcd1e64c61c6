// The fleet at a glance: components, agents (live), running tasks (live), today's spend
// against yesterday's (and budgets where the server has them), the last 24 h of cost.
import { html, useMemo, useState } from "../html.js";
import { get, hasPath } from "../api.js";
import { fmtUsd, fmtInt, fmtPct, fmtAgo, fmtNum, browserZone, startOfLocalDay } from "../format.js";
import { Badge, Card, ErrorBox, Empty, Loading, Stat, useChannel, useData, useEvery } from "../ui.js";
import { Chart, bucketsToX } from "../chart.js";
import { TaskTable } from "./tasks.js";

function Status() {
  const { data, error, reload } = useData(() => get("/api/status"), []);
  useEvery(10_000, reload);
  if (error) return html`<${Card} title="System"><${ErrorBox} error=${error} retry=${reload} /><//>`;
  if (!data) return html`<${Card} title="System"><${Loading} /><//>`;
  const c = data.components;
  return html`<${Card} title="System" testid="system-status">
    <div class="stats">
      <${Stat} label="Status" value=${html`<${Badge} value=${data.status} />`} sub=${`version ${data.version}`} />
      <${Stat} label="Database" value=${html`<${Badge} value=${c.database.ok ? "ok" : "failed"} label=${c.database.ok ? "up" : "down"} />`}
        sub=${`${c.database.backend} · ${fmtNum(c.database.latency_ms)} ms`} />
      <${Stat} label="Broker" value=${html`<${Badge} value=${c.broker.ok ? "ok" : "failed"} label=${c.broker.ok ? "up" : "down"} />`}
        sub=${`${c.broker.backend} · ${fmtNum(c.broker.latency_ms)} ms`} />
      <${Stat} label="Realtime" value=${fmtInt(data.realtime.connections)} sub=${`connections · ${fmtInt(data.realtime.subscriptions)} subscriptions`} />
      <${Stat} label="Tasks" value=${fmtInt(data.tasks.running)} sub=${`running · ${fmtInt(data.tasks.queued)} queued`} />
      <${Stat} label="Agents" value=${`${fmtInt(data.agents.online)} / ${fmtInt(data.agents.total)}`} sub="online" />
    </div>
  <//>`;
}

function Agents() {
  const { data, error, reload, setData } = useData(() => get("/api/agents"), []);
  useChannel("agents", (event) => {
    if (event.type !== "agent_status" || !event.agent) return;
    setData((d) => {
      if (!d) return d;
      const items = d.items.filter((a) => a.name !== event.agent.name);
      return { ...d, items: [...items, event.agent].sort((a, b) => a.name.localeCompare(b.name)) };
    });
  });
  let body;
  if (error) body = html`<${ErrorBox} error=${error} retry=${reload} />`;
  else if (!data) body = html`<${Loading} />`;
  else if (!data.items.length) body = html`<${Empty}>No agents yet. An agent appears when it sends <code>PUT /api/agents/NAME</code> or a heartbeat.<//>`;
  else {
    const count = (s) => data.items.filter((a) => a.status === s).length;
    body = html`<p class="muted small">${count("online")} online · ${count("busy")} busy · ${count("offline")} offline</p>
      <div class="table-wrap"><table><thead><tr><th scope="col">Agent</th><th scope="col">Status</th>
        <th scope="col" class="num">Running</th><th scope="col" class="num">Queued</th>
        <th scope="col" class="num">Tasks 24 h</th><th scope="col" class="num">Success 24 h</th>
        <th scope="col">Last heartbeat</th></tr></thead>
      <tbody>${data.items.map((a) => html`<tr key=${a.name}><td>${a.name}</td><td><${Badge} value=${a.status} /></td>
        <td class="num">${fmtInt(a.running_tasks)}</td><td class="num">${fmtInt(a.queued_tasks)}</td>
        <td class="num">${fmtInt(a.tasks_24h)}</td><td class="num">${fmtPct(a.success_rate_24h)}</td>
        <td>${fmtAgo(a.last_heartbeat_at)}</td></tr>`)}</tbody></table></div>`;
  }
  return html`<${Card} title="Agents" testid="agents">${body}<//>`;
}

function RunningTasks() {
  const { data, error, reload, setData } = useData(
    () => get("/api/tasks", { status: "running", per_page: 20, sort: "-created_at" }),
    [],
  );
  useChannel("tasks", (event) => {
    if (event.type !== "task_status" || !event.task_id) return;
    const { type, channel, ...task } = event;
    setData((d) => {
      if (!d) return d;
      const rest = d.items.filter((t) => t.task_id !== task.task_id);
      const old = d.items.find((t) => t.task_id === task.task_id);
      if (task.status === "running") {
        const items = old ? d.items.map((t) => (t.task_id === task.task_id ? { ...t, ...task } : t)) : [{ ...task }, ...rest];
        return { ...d, items: items.slice(0, 20), total: d.total + (old ? 0 : 1) };
      }
      return old ? { ...d, items: rest, total: Math.max(0, d.total - 1) } : d;
    });
  });
  let body;
  if (error) body = html`<${ErrorBox} error=${error} retry=${reload} />`;
  else if (!data) body = html`<${Loading} />`;
  else if (!data.items.length) body = html`<${Empty}>Nothing is running. Tasks show here live as agents start them.<//>`;
  else body = html`<p class="muted small">${fmtInt(data.total)} running${data.total > data.items.length ? `, the newest ${data.items.length} shown` : ""} · <a href="/tasks?status=running">all running tasks</a></p>
    <${TaskTable} tasks=${data.items} caption="Running tasks" />`;
  return html`<${Card} title="Running now" testid="running-tasks">${body}<//>`;
}

function Spend() {
  const spend = useData(async () => {
    const now = new Date();
    const today = startOfLocalDay(now);
    const yesterday = new Date(today);
    yesterday.setDate(yesterday.getDate() - 1);
    const [t, y, budgets] = await Promise.all([
      get("/api/analytics/summary", { from: today.toISOString(), to: now.toISOString() }),
      get("/api/analytics/summary", { from: yesterday.toISOString(), to: today.toISOString() }),
      hasPath("/api/budgets") ? get("/api/budgets") : null,
    ]);
    return { t, y, budgets };
  }, []);
  const { data, error, reload, setData } = spend;
  useEvery(30_000, reload);
  useChannel(hasPath("/api/budgets") ? "budgets" : null, (event) => {
    if (event.type !== "budget_state" || !event.budget) return;
    const replace = (b) => (b.budget_id === event.budget.budget_id ? event.budget : b);
    setData((d) => (d?.budgets ? { ...d, budgets: { ...d.budgets, items: d.budgets.items.map(replace) } } : d));
  });
  if (error) return html`<${Card} title="Spend"><${ErrorBox} error=${error} retry=${reload} /><//>`;
  if (!data) return html`<${Card} title="Spend"><${Loading} /><//>`;
  const { t, y, budgets } = data;
  const change = y.total_cost_usd > 0 ? t.total_cost_usd / y.total_cost_usd - 1 : null;
  return html`<${Card} title="Spend" testid="spend">
    <div class="stats">
      <${Stat} label="Today" value=${fmtUsd(t.total_cost_usd)} sub=${`${fmtInt(t.total_tasks)} tasks so far`} />
      <${Stat} label="Yesterday" value=${fmtUsd(y.total_cost_usd)} sub=${`${fmtInt(y.total_tasks)} tasks`} />
      <${Stat} label="Today vs yesterday" value=${change === null ? "—" : `${change >= 0 ? "+" : ""}${fmtPct(change)}`}
        sub="of yesterday's whole day" />
      <${Stat} label="Success today" value=${fmtPct(t.success_rate)} sub=${`${fmtInt(t.failed_tasks)} failed`} />
    </div>
    ${budgets?.items?.length ? html`<h3>Budgets</h3><ul class="budgets">${budgets.items.map((b) => html`<li key=${b.budget_id}>
      <span>${b.name}</span> <${Badge} value=${b.state} />
      <meter min="0" max=${b.limit_usd} value=${Math.min(b.spent_usd, b.limit_usd)} aria-label=${`${b.name} spent`}></meter>
      <span class="muted small">${fmtUsd(b.spent_usd)} of ${fmtUsd(b.limit_usd)} this ${b.period}</span></li>`)}</ul>` : null}
  <//>`;
}

function CostDay() {
  const { data, error, reload } = useData(() => {
    const now = new Date();
    return get("/api/analytics/costs/histogram", {
      period: "hour",
      tz: browserZone,
      from: new Date(now.getTime() - 23 * 3600 * 1000).toISOString(),
      to: now.toISOString(),
    });
  }, []);
  const x = useMemo(() => (data ? bucketsToX(data.buckets) : []), [data]);
  const series = useMemo(
    () => (data ? [{ label: "Cost", values: data.buckets.map((b) => Number(b.cost_usd)), kind: "bars" }] : []),
    [data],
  );
  if (error) return html`<${Card} title="Cost, last 24 hours"><${ErrorBox} error=${error} retry=${reload} /><//>`;
  if (!data) return html`<${Card} title="Cost, last 24 hours"><${Loading} /><//>`;
  return html`<${Card} title="Cost, last 24 hours">
    <${Chart} name="cost-24h" x=${x} series=${series} yFormat=${fmtUsd} period="hour" />
    <p class="muted small">Per hour, in your time zone (${browserZone}).</p>
  <//>`;
}

export function Overview() {
  return html`<div class="page">
    <h1>Overview</h1>
    <${Status} />
    <div class="grid-2"><${Spend} /><${CostDay} /></div>
    <${RunningTasks} />
    <${Agents} />
  </div>`;
}
