// One task: every field, the status timeline, and the live log over /ws. The log resumes
// after a reconnect with since_seq = the last seq shown (LogView drops any repeat), shows
// the connection state, follows the end until the user scrolls up, and stays bounded.
import { html, useEffect, useRef, useState } from "../html.js";
import { get, post, hasPath, download, ApiError } from "../api.js";
import { live } from "../live.js";
import { navigate } from "../router.js";
import { fmtUsd, fmtDuration, fmtTime, fmtInt } from "../format.js";
import { Badge, ErrorBox, Loading, LiveState } from "../ui.js";
import { LogView, DEFAULT_LIMIT } from "../logview.js";

const TERMINAL = ["completed", "failed", "cancelled"];
const MAX_SEQ = 2 ** 31 - 1;

export function LiveLog({ taskId, initialSeq = 0, limit = DEFAULT_LIMIT, compact = false, onStatus }) {
  const box = useRef(null);
  const view = useRef(null);
  const [follow, setFollow] = useState(true);
  const [trimmed, setTrimmed] = useState(0);
  const [empty, setEmpty] = useState(true);
  const [error, setError] = useState(null);
  const statusRef = useRef(onStatus);
  statusRef.current = onStatus;

  useEffect(() => {
    const v = new LogView(box.current, { limit, onTrim: setTrimmed });
    view.current = v;
    v.followListeners.add(setFollow);
    // A long log starts near its end: the earlier chunks stay one download away.
    const start = Math.max(0, initialSeq - limit);
    let shown = false;
    v.startAfter(start);
    if (start > 0) setTrimmed(start);
    const stop = live.subscribe(
      `task:${taskId}`,
      (event) => {
        if (event.type === "task_output") {
          // Once, not per chunk: a state update per event would re-render at the output's rate.
          if (v.push(event) && v.lastSeq === event.seq && !shown) {
            shown = true;
            setEmpty(false);
          }
        } else if (event.type === "task_status" || event.type === "task_cancel_requested") {
          statusRef.current?.(event);
        } else if (event.type === "error") {
          setError(event.message);
        }
      },
      () => v.lastSeq,
    );
    return () => {
      stop();
      v.destroy();
    };
  }, [taskId]);

  const downloadLog = () =>
    download(`/api/tasks/${encodeURIComponent(taskId)}/logs/full`, { format: "text" }, `${taskId}.log`).catch(
      (err) => setError(err.message),
    );

  return html`<section class=${`card log-card ${compact ? "compact" : ""}`} aria-label="Live log">
    <div class="log-head">
      <h2>${compact ? "Output" : "Live log"}</h2>
      <${LiveState} />
      <span class="legend"><span class="stream-stdout">stdout</span> <span class="stream-stderr">stderr</span>
        <span class="stream-system">system</span></span>
      <span class="spacer"></span>
      <label class="check"><input type="checkbox" name="follow" checked=${follow}
        onChange=${(e) => view.current.setFollow(e.target.checked)} /> Follow</label>
      <button type="button" onClick=${downloadLog}>Download as text</button>
    </div>
    ${trimmed > 0 && html`<p class="muted small" data-testid="log-trimmed">The first ${fmtInt(trimmed)}
      chunk${trimmed === 1 ? " is" : "s are"} not shown here; download the log for all of it.</p>`}
    ${error && html`<p class="error-text" role="alert">${error}</p>`}
    <pre class="log" data-testid="task-log" ref=${box} tabindex="0" aria-live="off"
      aria-label="Task output"></pre>
    ${empty && html`<p class="muted small log-empty">No output yet; it appears here as the agent writes it.</p>`}
  </section>`;
}

function Timeline({ events }) {
  if (!events?.length) return html`<p class="muted">No status changes recorded.</p>`;
  return html`<ol class="timeline">
    ${events.map((e) => html`<li><${Badge} value=${e.status} /> <time datetime=${e.at}>${fmtTime(e.at)}</time></li>`)}
  </ol>`;
}

function Row({ label, children }) {
  return html`<div class="kv"><dt>${label}</dt><dd>${children}</dd></div>`;
}

function TextBlock({ text, label }) {
  if (text === null || text === undefined || text === "") return html`<span class="muted">—</span>`;
  return html`<pre class="text-block" aria-label=${label}>${text}</pre>`;
}

export function TaskPage({ params, admin }) {
  const taskId = params.id;
  const [task, setTask] = useState(null);
  const [events, setEvents] = useState([]);
  const [error, setError] = useState(null);
  const [actionError, setActionError] = useState(null);
  const [busy, setBusy] = useState(false);
  const canRetry = hasPath("/api/tasks/{task_id}/retry");

  const load = () => {
    setError(null);
    get(`/api/tasks/${encodeURIComponent(taskId)}/logs/full`, { after_seq: MAX_SEQ })
      .then((full) => {
        setTask(full.task);
        setEvents(full.events);
      })
      .catch(setError);
  };
  useEffect(() => {
    load();
  }, [taskId]);

  const onStatus = (event) => {
    const { type, channel, ...fields } = event;
    if (type === "task_cancel_requested") {
      setTask((t) => t && { ...t, cancel_requested: true });
      return;
    }
    setTask((t) => {
      if (t && fields.status && fields.status !== t.status) {
        setEvents((ev) => [...ev, { type: "status", status: fields.status, at: fields.updated_at || new Date().toISOString() }]);
      }
      return t && { ...t, ...fields };
    });
  };

  const act = async (what) => {
    setBusy(true);
    setActionError(null);
    try {
      const answer = await post(`/api/tasks/${encodeURIComponent(taskId)}/${what}`);
      if (what === "cancel") setTask((t) => ({ ...t, ...answer }));
      else navigate(`/tasks/${encodeURIComponent(answer.task_id)}`);
    } catch (err) {
      setActionError(err instanceof ApiError ? `${err.title}: ${err.message}` : String(err));
    } finally {
      setBusy(false);
    }
  };

  if (error) return html`<div class="page"><h1>Task</h1><${ErrorBox} error=${error} retry=${load} />
    <p><a href="/tasks">Back to the task list</a></p></div>`;
  if (!task) return html`<div class="page"><${Loading} what="Loading the task" /></div>`;
  const running = !TERMINAL.includes(task.status);
  const retryable = ["failed", "cancelled"].includes(task.status);
  return html`<div class="page task-page">
    <div class="page-head">
      <h1 class="ellipsis">Task <span class="mono">${task.task_id}</span></h1>
      <${Badge} value=${task.status} />
      ${task.cancel_requested && running && html`<span class="badge badge-warn">cancel requested</span>`}
      <div class="actions">
        ${running && html`<button type="button" class="danger" disabled=${busy || task.cancel_requested}
          onClick=${() => act("cancel")}>Cancel task</button>`}
        ${retryable && canRetry && html`<button type="button" disabled=${busy} onClick=${() => act("retry")}>Retry</button>`}
      </div>
    </div>
    ${actionError && html`<p class="error-text" role="alert">${actionError}</p>`}
    <div class="task-grid">
      <section class="card"><h2>Details</h2>
        <dl class="fields">
          <${Row} label="Agent type">${task.agent_type}<//>
          <${Row} label="Assigned agent">${task.assigned_agent || "—"}<//>
          <${Row} label="Source">${task.source}<//>
          <${Row} label="Model">${task.model || "—"}<//>
          <${Row} label="User">${task.user_id || "—"}<//>
          <${Row} label="Conversation">${task.conversation_id
            ? html`<a href=${`/conversations/${encodeURIComponent(task.conversation_id)}`}>${task.conversation_id}</a>` : "—"}<//>
          <${Row} label="Parent task">${task.parent_task_id
            ? html`<a href=${`/tasks/${encodeURIComponent(task.parent_task_id)}`}>${task.parent_task_id}</a>` : "—"}<//>
          <${Row} label="Flow">${task.flow_id || "—"}<//>
          ${"attempt" in task && html`<${Row} label="Attempt">${fmtInt(task.attempt)}${task.retry_of
            ? html` (retry of <a href=${`/tasks/${encodeURIComponent(task.retry_of)}`}>${task.retry_of}</a>)` : ""}<//>`}
          ${task.failure_reason && html`<${Row} label="Failure reason">${task.failure_reason}<//>`}
          ${task.lease_expires_at && html`<${Row} label="Lease until">${fmtTime(task.lease_expires_at)}<//>`}
          <${Row} label="Cost">${fmtUsd(task.cost_usd)} <span class="muted small">(${task.cost_basis})</span><//>
          <${Row} label="Tokens">${`${fmtInt(task.input_tokens)} in · ${fmtInt(task.output_tokens)} out · ${fmtInt(task.cache_read_tokens)} cache read · ${fmtInt(task.cache_write_tokens)} cache write`}<//>
          <${Row} label="Duration">${fmtDuration(task.duration_seconds)}<//>
          <${Row} label="Created">${fmtTime(task.created_at)}<//>
          <${Row} label="Started">${fmtTime(task.started_at)}<//>
          <${Row} label="Completed">${fmtTime(task.completed_at)}<//>
          <${Row} label="Updated">${fmtTime(task.updated_at)}<//>
          <${Row} label="Output chunks">${fmtInt(task.output_seq)}<//>
        </dl>
      </section>
      <section class="card"><h2>Status timeline</h2><${Timeline} events=${events} /></section>
    </div>
    <section class="card"><h2>Input</h2><${TextBlock} text=${task.input_message} label="Input message" /></section>
    ${(task.result || task.error) && html`<section class="card"><h2>${task.error ? "Error" : "Result"}</h2>
      ${task.result && html`<${TextBlock} text=${task.result} label="Result" />`}
      ${task.error && html`<${TextBlock} text=${task.error} label="Error" />`}</section>`}
    <${LiveLog} taskId=${task.task_id} initialSeq=${task.output_seq} onStatus=${onStatus} />
    <section class="card"><h2>Metadata</h2><${TextBlock} text=${JSON.stringify(task.metadata ?? {}, null, 2)} label="Metadata" /></section>
  </div>`;
}
