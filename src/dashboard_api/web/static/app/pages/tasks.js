// The task list: filters in the URL, exact total, cursor "load more", live status updates
// from the `tasks` channel applied in place (new matching tasks wait behind a banner, so
// the rows the user is reading never move).
import { html, useEffect, useLayoutEffect, useMemo, useRef, useState } from "../html.js";
import { get, hasPath, download } from "../api.js";
import { setQuery } from "../router.js";
import { fmtUsd, fmtDuration, fmtTime, fmtShort, fmtInt, isoToLocalInput, localInputToIso } from "../format.js";
import { Badge, ErrorBox, Empty, Field, Loading, useChannel } from "../ui.js";

export const STATUSES = ["queued", "running", "completed", "failed", "cancelled"];
const SORTS = [
  ["-created_at", "Newest first"],
  ["created_at", "Oldest first"],
  ["-cost_usd", "Most expensive"],
  ["cost_usd", "Cheapest"],
  ["-duration_seconds", "Longest"],
  ["duration_seconds", "Shortest"],
];
const KNOWN_SOURCES = ["api", "dashboard", "github", "jira", "slack", "otlp"];
const PER_PAGE = 50;

function filtersFrom(query) {
  const list = (name) => (query.get(name) || "").split(",").map((s) => s.trim()).filter(Boolean);
  return {
    status: list("status").filter((s) => STATUSES.includes(s)),
    agent_type: query.get("agent_type") || "",
    source: query.get("source") || "",
    created_after: query.get("created_after") || "",
    created_before: query.get("created_before") || "",
    q: query.get("q") || "",
    sort: SORTS.some(([v]) => v === query.get("sort")) ? query.get("sort") : "-created_at",
  };
}

function apiParams(f) {
  return {
    status: f.status.length ? f.status.join(",") : undefined,
    agent_type: f.agent_type || undefined,
    source: f.source || undefined,
    created_after: f.created_after || undefined,
    created_before: f.created_before || undefined,
    q: f.q || undefined,
    sort: f.sort,
  };
}

function matches(f, task) {
  if (f.status.length && !f.status.includes(task.status)) return false;
  if (f.agent_type && task.agent_type !== f.agent_type) return false;
  if (f.source && task.source !== f.source) return false;
  if (f.created_after && task.created_at < f.created_after) return false;
  if (f.created_before && task.created_at >= f.created_before) return false;
  if (f.q && !(task.input_preview || "").toLowerCase().includes(f.q.toLowerCase())) return false;
  return true;
}

export function TaskRow({ task }) {
  const href = `/tasks/${encodeURIComponent(task.task_id)}`;
  return html`<tr data-task-id=${task.task_id}>
    <td class="mono ellipsis id"><a href=${href} title=${task.task_id}>${task.task_id}</a></td>
    <td><${Badge} value=${task.status} />${task.cancel_requested && task.status === "running" ? html` <span class="muted small">cancelling</span>` : null}</td>
    <td class="nowrap">${task.agent_type}</td>
    <td>${task.source}</td>
    <td class="preview ellipsis" title=${task.input_preview}>${task.input_preview}</td>
    <td class="num">${fmtUsd(task.cost_usd)}</td>
    <td class="num">${fmtDuration(task.duration_seconds)}</td>
    <td class="nowrap" title=${fmtTime(task.created_at)}>${fmtShort(task.created_at)}</td>
  </tr>`;
}

export function TaskTable({ tasks, caption }) {
  return html`<div class="table-wrap"><table class="tasks">
    ${caption && html`<caption class="sr-only">${caption}</caption>`}
    <thead><tr><th scope="col">Task</th><th scope="col">Status</th><th scope="col">Agent type</th>
      <th scope="col">Source</th><th scope="col">Input</th><th scope="col" class="num">Cost</th>
      <th scope="col" class="num">Duration</th><th scope="col">Created</th></tr></thead>
    <tbody>${tasks.map((t) => html`<${TaskRow} key=${t.task_id} task=${t} />`)}</tbody>
  </table></div>`;
}

export function TaskList({ query }) {
  const [filters, setFilters] = useState(() => filtersFrom(query));
  const [search, setSearch] = useState(filters.q);
  const [list, setList] = useState({ items: [], total: null, next: null });
  const [loading, setLoading] = useState(true);
  const [more, setMore] = useState(false);
  const [error, setError] = useState(null);
  const [fresh, setFresh] = useState(0);
  const [agentTypes, setAgentTypes] = useState([]);
  const canExport = hasPath("/api/tasks/export");
  const generation = useRef(0);
  const filtersRef = useRef(filters);
  filtersRef.current = filters;

  useEffect(() => {
    get("/api/agents").then((r) => setAgentTypes(r.items.map((a) => a.name).sort()), () => {});
  }, []);

  const load = () => {
    const mine = ++generation.current;
    setLoading(true);
    setError(null);
    setFresh(0);
    get("/api/tasks", { ...apiParams(filters), per_page: PER_PAGE })
      .then((page) => {
        if (mine !== generation.current) return;
        setList({ items: page.items, total: page.total, next: page.next_cursor });
      })
      .catch((err) => mine === generation.current && setError(err))
      .finally(() => mine === generation.current && setLoading(false));
  };

  // A layout effect: the list's request leaves before the first paint, not after it.
  useLayoutEffect(() => {
    setQuery({
      status: filters.status,
      agent_type: filters.agent_type,
      source: filters.source,
      created_after: filters.created_after,
      created_before: filters.created_before,
      q: filters.q,
      sort: filters.sort === "-created_at" ? "" : filters.sort,
    });
    load();
  }, [filters]);

  // The search box applies after a pause in typing.
  useEffect(() => {
    if (search === filters.q) return undefined;
    const timer = setTimeout(() => setFilters((f) => ({ ...f, q: search })), 300);
    return () => clearTimeout(timer);
  }, [search]);

  const loadMore = () => {
    const mine = generation.current;
    setMore(true);
    get("/api/tasks", { ...apiParams(filters), per_page: PER_PAGE, cursor: list.next })
      .then((page) => {
        if (mine !== generation.current) return;
        setList((l) => {
          const seen = new Set(l.items.map((t) => t.task_id));
          return {
            items: [...l.items, ...page.items.filter((t) => !seen.has(t.task_id))],
            total: page.total,
            next: page.next_cursor,
          };
        });
      })
      .catch(setError)
      .finally(() => setMore(false));
  };

  useChannel("tasks", (event) => {
    if (event.type !== "task_status" || !event.task_id) return;
    setList((l) => {
      const i = l.items.findIndex((t) => t.task_id === event.task_id);
      if (i >= 0) {
        const items = l.items.slice();
        const { type, channel, ...fields } = event;
        items[i] = { ...items[i], ...fields };
        return { ...l, items };
      }
      const f = filtersRef.current;
      const newest = l.items[0]?.created_at;
      if (event.created_at && (!newest || event.created_at > newest) && matches(f, event)) {
        setFresh((n) => n + 1);
      }
      return l;
    });
  });

  const set = (name) => (event) => setFilters((f) => ({ ...f, [name]: event.target.value }));
  const setDate = (name) => (event) =>
    setFilters((f) => ({ ...f, [name]: localInputToIso(event.target.value) }));
  const toggleStatus = (status) => (event) =>
    setFilters((f) => ({
      ...f,
      status: event.target.checked ? [...f.status, status] : f.status.filter((s) => s !== status),
    }));
  const clear = () => {
    setSearch("");
    setFilters(filtersFrom(new URLSearchParams()));
  };
  const exportAs = (format) =>
    download("/api/tasks/export", { ...apiParams(filters), format }, `tasks.${format}`).catch(setError);
  // Phones start with the filters folded away (the list is what they came for).
  const [wide] = useState(() => matchMedia("(min-width: 761px)").matches);
  const activeCount =
    (filters.status.length ? 1 : 0) +
    ["agent_type", "source", "created_after", "created_before", "q"].filter((k) => filters[k]).length;
  const filtered = useMemo(
    () => Boolean(filters.status.length || filters.agent_type || filters.source || filters.created_after || filters.created_before || filters.q),
    [filters],
  );

  return html`<div class="page">
    <div class="page-head">
      <h1>Tasks</h1>
      <p class="muted" data-testid="task-total" aria-live="polite">${list.total === null
        ? ""
        : `${fmtInt(list.items.length)} shown of ${fmtInt(list.total)} ${filtered ? "matching" : ""} task${list.total === 1 ? "" : "s"}`}</p>
      ${canExport && html`<div class="actions">
        <button type="button" onClick=${() => exportAs("csv")}>Export CSV</button>
        <button type="button" onClick=${() => exportAs("jsonl")}>Export JSONL</button>
      </div>`}
    </div>
    <details class="filters-box" open=${wide}>
    <summary>Filters${activeCount ? ` (${activeCount} active)` : ""}</summary>
    <form class="filters card" role="search" aria-label="Task filters" onSubmit=${(e) => e.preventDefault()}>
      <fieldset class="statuses"><legend>Status</legend>
        ${STATUSES.map((s) => html`<label class="check"><input type="checkbox" name="status" value=${s}
          checked=${filters.status.includes(s)} onChange=${toggleStatus(s)} /> ${s}</label>`)}
      </fieldset>
      <${Field} label="Agent type"><select name="agent_type" value=${filters.agent_type} onChange=${set("agent_type")}>
        <option value="">Any</option>
        ${[...new Set([...agentTypes, filters.agent_type].filter(Boolean))].map((a) => html`<option value=${a}>${a}</option>`)}
      </select><//>
      <${Field} label="Source"><select name="source" value=${filters.source} onChange=${set("source")}>
        <option value="">Any</option>
        ${[...new Set([...KNOWN_SOURCES, filters.source].filter(Boolean))].map((s) => html`<option value=${s}>${s}</option>`)}
      </select><//>
      <${Field} label="Created from"><input type="datetime-local" name="created_after"
        value=${isoToLocalInput(filters.created_after)} onChange=${setDate("created_after")} /><//>
      <${Field} label="Created before"><input type="datetime-local" name="created_before"
        value=${isoToLocalInput(filters.created_before)} onChange=${setDate("created_before")} /><//>
      <${Field} label="Search input"><input type="search" name="q" value=${search}
        placeholder="Text in the task's input" onInput=${(e) => setSearch(e.target.value)} /><//>
      <${Field} label="Sort"><select name="sort" value=${filters.sort} onChange=${set("sort")}>
        ${SORTS.map(([v, label]) => html`<option value=${v}>${label}</option>`)}
      </select><//>
      <button type="button" onClick=${clear} disabled=${!filtered}>Clear filters</button>
    </form>
    </details>
    ${fresh > 0 && html`<button type="button" class="banner" onClick=${load}>
      ${fresh} new task${fresh === 1 ? "" : "s"} match these filters — show them</button>`}
    <${ErrorBox} error=${error} retry=${load} />
    ${loading && !list.items.length ? html`<${Loading} what="Loading tasks" />` : null}
    ${!loading && !error && list.items.length === 0
      ? html`<${Empty}>${filtered
          ? html`No task matches these filters. <button type="button" onClick=${clear}>Clear the filters</button>`
          : html`No tasks yet. Agents register tasks with <code>POST /api/tasks</code>; <code>dashboard-api seed --tasks 100</code> adds sample ones.`}<//>`
      : null}
    ${list.items.length > 0 && html`<${TaskTable} tasks=${list.items} caption="Tasks" />`}
    ${list.next && html`<div class="more"><button type="button" onClick=${loadMore} disabled=${more}>
      ${more ? "Loading…" : `Load ${PER_PAGE} more`}</button></div>`}
  </div>`;
}
