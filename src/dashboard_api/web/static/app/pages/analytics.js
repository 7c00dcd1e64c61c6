// Analytics for a range: summary cards, cost / task / token histograms by hour or day in a
// chosen time zone (the browser's by default), and the performance table; optionally only
// the tasks that failed for one reason (`failure_reason`, on all three calls).
import { html, useMemo, useState } from "../html.js";
import { get } from "../api.js";
import { setQuery } from "../router.js";
import { fmtUsd, fmtInt, fmtCompact, fmtPct, fmtDuration, fmtNum, browserZone, isoToLocalInput, localInputToIso } from "../format.js";
import { Card, ErrorBox, Empty, Field, Loading, Stat, useData } from "../ui.js";
import { Chart, bucketsToX } from "../chart.js";

// The API's failure reasons (docs/leases.md): lost work and reported failures.
const FAILURE_REASONS = [
  ["lease_expired", "Lease expired"],
  ["agent", "Reported by the agent"],
];

const PRESETS = [
  ["24h", "Last 24 hours", 1],
  ["7d", "Last 7 days", 7],
  ["30d", "Last 30 days", 30],
  ["90d", "Last 90 days", 90],
  ["custom", "Custom range", null],
];

function zones() {
  try {
    const all = Intl.supportedValuesOf("timeZone");
    return all.includes(browserZone) ? all : [browserZone, ...all];
  } catch {
    return [browserZone, "UTC"];
  }
}

function rangeOf(state) {
  if (state.range === "custom" && state.from && state.to) return { from: state.from, to: state.to };
  const days = (PRESETS.find(([k]) => k === state.range) || PRESETS[2])[2] || 30;
  const to = new Date();
  return { from: new Date(to.getTime() - days * 86400 * 1000).toISOString(), to: to.toISOString() };
}

function PerfTable({ title, rows, keyName }) {
  if (!rows?.length) return null;
  return html`<h3>${title}</h3><div class="table-wrap"><table class="perf">
    <thead><tr><th scope="col">${keyName.replace("_", " ")}</th><th scope="col" class="num">Tasks</th>
      <th scope="col" class="num">Success</th><th scope="col" class="num">p50</th><th scope="col" class="num">p95</th>
      <th scope="col" class="num">Average</th><th scope="col" class="num">Cost</th><th scope="col" class="num">Avg cost</th>
      <th scope="col" class="num">Tokens in / out</th>
      ${rows.some((r) => "p50_first_output_seconds" in r) && html`<th scope="col" class="num">First output p50</th>`}</tr></thead>
    <tbody>${rows.map((r) => html`<tr><th scope="row">${r[keyName] ?? "overall"}</th><td class="num">${fmtInt(r.tasks)}</td>
      <td class="num">${fmtPct(r.success_rate)}</td><td class="num">${fmtDuration(r.p50_duration_seconds)}</td>
      <td class="num">${fmtDuration(r.p95_duration_seconds)}</td><td class="num">${fmtDuration(r.avg_duration_seconds)}</td>
      <td class="num">${fmtUsd(r.total_cost_usd)}</td><td class="num">${fmtUsd(r.avg_cost_usd)}</td>
      <td class="num">${fmtInt(r.input_tokens)} / ${fmtInt(r.output_tokens)}</td>
      ${"p50_first_output_seconds" in r && html`<td class="num">${fmtDuration(r.p50_first_output_seconds)}</td>`}</tr>`)}</tbody>
  </table></div>`;
}

export function Analytics({ query }) {
  const [state, setState] = useState(() => ({
    range: query.get("range") || "30d",
    from: query.get("from") || "",
    to: query.get("to") || "",
    period: query.get("period") || "",
    tz: query.get("tz") || browserZone,
    failure_reason: query.get("failure_reason") || "",
  }));
  const range = useMemo(() => rangeOf(state), [state]);
  const days = (new Date(range.to) - new Date(range.from)) / 86400000;
  const period = state.period || (days <= 3 ? "hour" : "day");
  const update = (patch) =>
    setState((s) => {
      const next = { ...s, ...patch };
      setQuery({ range: next.range, from: next.range === "custom" ? next.from : "", to: next.range === "custom" ? next.to : "",
        period: next.period, tz: next.tz === browserZone ? "" : next.tz, failure_reason: next.failure_reason });
      return next;
    });
  const { data, error, reload } = useData(
    () => {
      const q = { from: range.from, to: range.to, failure_reason: state.failure_reason || undefined };
      return Promise.all([
        get("/api/analytics/summary", q),
        get("/api/analytics/costs/histogram", { ...q, period, tz: state.tz }),
        get("/api/analytics/performance", q),
      ]).then(([summary, histogram, performance]) => ({ summary, histogram, performance }));
    },
    [range.from, range.to, period, state.tz, state.failure_reason],
  );
  const charts = useMemo(() => {
    if (!data) return null;
    const b = data.histogram.buckets;
    return {
      x: bucketsToX(b),
      cost: [{ label: "Cost", values: b.map((x) => Number(x.cost_usd)), kind: "bars" }],
      tasks: [
        { label: "Tasks", values: b.map((x) => x.tasks) },
        { label: "Completed", values: b.map((x) => x.completed) },
        { label: "Failed", values: b.map((x) => x.failed) },
      ],
      tokens: [
        { label: "Input tokens", values: b.map((x) => x.input_tokens) },
        { label: "Output tokens", values: b.map((x) => x.output_tokens) },
      ],
    };
  }, [data]);
  const s = data?.summary;
  return html`<div class="page">
    <h1>Analytics</h1>
    <form class="filters card" aria-label="Range" onSubmit=${(e) => e.preventDefault()}>
      <${Field} label="Range"><select name="range" value=${state.range} onChange=${(e) => {
        const value = e.target.value;
        update(value === "custom" ? { range: value, from: range.from, to: range.to } : { range: value });
      }}>${PRESETS.map(([k, label]) => html`<option value=${k}>${label}</option>`)}</select><//>
      ${state.range === "custom" && html`
        <${Field} label="From"><input type="datetime-local" name="from" value=${isoToLocalInput(state.from)}
          onChange=${(e) => update({ from: localInputToIso(e.target.value) })} /><//>
        <${Field} label="To"><input type="datetime-local" name="to" value=${isoToLocalInput(state.to)}
          onChange=${(e) => update({ to: localInputToIso(e.target.value) })} /><//>`}
      <${Field} label="Group by"><select name="period" value=${state.period} onChange=${(e) => update({ period: e.target.value })}>
        <option value="">Automatic (${days <= 3 ? "hour" : "day"})</option><option value="hour">Hour</option><option value="day">Day</option>
      </select><//>
      <${Field} label="Time zone"><select name="tz" value=${state.tz} onChange=${(e) => update({ tz: e.target.value })}>
        ${zones().map((z) => html`<option value=${z}>${z}</option>`)}
      </select><//>
      <${Field} label="Failure reason"><select name="failure_reason" value=${state.failure_reason}
        onChange=${(e) => update({ failure_reason: e.target.value })}>
        <option value="">Any task</option>
        ${FAILURE_REASONS.map(([k, label]) => html`<option value=${k}>${label}</option>`)}
      </select><//>
    </form>
    <${ErrorBox} error=${error} retry=${reload} />
    ${!data && !error && html`<${Loading} what="Loading analytics" />`}
    ${s && html`<${Card} title="Summary" testid="summary"><div class="stats">
      <${Stat} label="Tasks" value=${fmtInt(s.total_tasks)} sub=${`${fmtNum(s.tasks_per_day)} per day`} />
      <${Stat} label="Success rate" value=${fmtPct(s.success_rate)} sub=${`${fmtInt(s.completed_tasks)} completed · ${fmtInt(s.failed_tasks)} failed`} />
      <${Stat} label="Total cost" value=${fmtUsd(s.total_cost_usd)} sub=${`${fmtUsd(s.avg_cost_per_task_usd)} per task`} />
      <${Stat} label="Tokens" value=${fmtInt(s.total_tokens)} sub=${`${fmtInt(s.input_tokens)} in · ${fmtInt(s.output_tokens)} out`} />
      <${Stat} label="Average duration" value=${fmtDuration(s.avg_duration_seconds)} />
      <${Stat} label="Now" value=${fmtInt(s.running_tasks)} sub=${`running · ${fmtInt(s.queued_tasks)} queued · ${fmtInt(s.cancelled_tasks)} cancelled`} />
    </div><//>`}
    ${charts && html`<div class="grid-2">
      <${Card} title=${`Cost per ${period}`}><${Chart} name="cost" x=${charts.x} series=${charts.cost} yFormat=${fmtUsd} period=${period} /><//>
      <${Card} title=${`Tasks per ${period}`}><${Chart} name="tasks" x=${charts.x} series=${charts.tasks} yFormat=${fmtInt} period=${period} /><//>
      <${Card} title=${`Tokens per ${period}`}><${Chart} name="tokens" x=${charts.x} series=${charts.tokens} yFormat=${fmtCompact} period=${period} /><//>
    </div>
    <p class="muted small">Buckets are aligned to the ${period} in ${state.tz}.</p>`}
    ${data && html`<${Card} title="Performance" testid="performance">
      ${data.performance.overall.tasks === 0
        ? html`<${Empty}>No tasks in this range. Pick a longer range above.<//>`
        : html`<${PerfTable} title="Overall" rows=${[data.performance.overall]} keyName="overall" />
          <${PerfTable} title="By agent type" rows=${data.performance.by_agent_type} keyName="agent_type" />
          <${PerfTable} title="By source" rows=${data.performance.by_source} keyName="source" />
          <${PerfTable} title="By model" rows=${data.performance.by_model} keyName="model" />`}
    <//>`}
  </div>`;
}
