// The caller's conversations: the list, one conversation with its messages live over
// `conversation:{id}`, a form to send a message (which starts a task), and the output of
// the conversation's latest task, live.
import { html, useEffect, useRef, useState } from "../html.js";
import { get, post } from "../api.js";
import { navigate } from "../router.js";
import { fmtTime, fmtAgo, fmtUsd, fmtInt } from "../format.js";
import { Badge, ErrorBox, Empty, Loading, useChannel, useData } from "../ui.js";
import { LiveLog } from "./task.js";

function List({ selected }) {
  const { data, error, reload, setData } = useData(() => get("/api/conversations", { per_page: 100 }), []);
  const [title, setTitle] = useState("");
  const [busy, setBusy] = useState(false);
  const [createError, setCreateError] = useState(null);
  const create = async (event) => {
    event.preventDefault();
    setBusy(true);
    setCreateError(null);
    try {
      const c = await post("/api/conversations", title.trim() ? { title: title.trim() } : {});
      setData((d) => d && { ...d, items: [c, ...d.items], total: d.total + 1 });
      setTitle("");
      navigate(`/conversations/${encodeURIComponent(c.conversation_id)}`);
    } catch (err) {
      setCreateError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<aside class="card conv-list" aria-label="Conversations">
    <form class="new-conv" onSubmit=${create}>
      <label class="field"><span>New conversation</span>
        <input name="title" value=${title} maxlength="500" placeholder="Title (optional)"
          onInput=${(e) => setTitle(e.target.value)} /></label>
      <button type="submit" class="primary" disabled=${busy}>Start</button>
    </form>
    <${ErrorBox} error=${createError} />
    <${ErrorBox} error=${error} retry=${reload} />
    ${!data && !error && html`<${Loading} />`}
    ${data && !data.items.length && html`<${Empty}>No conversations yet. Start one above.<//>`}
    ${data && html`<ul class="conv-items">${data.items.map((c) => html`<li key=${c.conversation_id}>
      <a href=${`/conversations/${encodeURIComponent(c.conversation_id)}`}
        aria-current=${c.conversation_id === selected ? "page" : undefined}>
        <span class="conv-title">${c.title}</span>
        <span class="muted small">${fmtInt(c.message_count)} messages · ${fmtAgo(c.updated_at)}</span>
      </a></li>`)}</ul>`}
  </aside>`;
}

function Message({ m }) {
  return html`<li class=${`msg msg-${m.role}`} data-message-id=${m.message_id}>
    <div class="msg-head"><strong>${m.role}</strong>
      <time class="muted small" datetime=${m.created_at}>${fmtTime(m.created_at)}</time>
      ${m.task_id && html`<a class="small" href=${`/tasks/${encodeURIComponent(m.task_id)}`}>task ${m.task_id}</a>`}</div>
    <div class="msg-body">${m.content}</div>
  </li>`;
}

async function allMessages(id) {
  const items = [];
  let cursor = null;
  do {
    const page = await get(`/api/conversations/${encodeURIComponent(id)}/messages`, { per_page: 200, cursor });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < 2000);
  return items;
}

function Thread({ id }) {
  const { data, error, reload, setData } = useData(
    () => Promise.all([get(`/api/conversations/${encodeURIComponent(id)}`), allMessages(id)])
      .then(([conversation, messages]) => ({ conversation, messages })),
    [id],
  );
  const [text, setText] = useState("");
  const [sending, setSending] = useState(false);
  const [sendError, setSendError] = useState(null);
  const [linked, setLinked] = useState({});
  const end = useRef(null);
  const add = (message) =>
    setData((d) => d && (d.messages.some((m) => m.message_id === message.message_id)
      ? d : { ...d, messages: [...d.messages, message] }));
  useChannel(`conversation:${id}`, (event) => {
    if (event.type === "message_created" && event.message) add(event.message);
    else if (event.type === "task_status" && event.task_id) setLinked((l) => ({ ...l, [event.task_id]: event.status }));
  }, [id]);
  useEffect(() => end.current?.scrollIntoView({ block: "end" }), [data?.messages.length]);
  const send = async (event) => {
    event.preventDefault();
    if (!text.trim()) return;
    setSending(true);
    setSendError(null);
    try {
      add(await post(`/api/conversations/${encodeURIComponent(id)}/messages`, { content: text, create_task: true }));
      setText("");
    } catch (err) {
      setSendError(err);
    } finally {
      setSending(false);
    }
  };
  if (error) return html`<section class="card"><${ErrorBox} error=${error} retry=${reload} /></section>`;
  if (!data) return html`<section class="card"><${Loading} what="Loading the conversation" /></section>`;
  const c = data.conversation;
  const lastTask = [...data.messages].reverse().find((m) => m.task_id)?.task_id;
  return html`<section class="thread">
    <div class="card">
      <h2>${c.title}</h2>
      <p class="muted small">${c.agent_type ? `Agent type ${c.agent_type} · ` : ""}${fmtInt(c.task_count)} tasks ·
        ${fmtUsd(c.total_cost_usd)} · started ${fmtTime(c.created_at)}</p>
      ${data.messages.length
        ? html`<ol class="messages" data-testid="messages" aria-live="polite">${data.messages.map((m) => html`<${Message} key=${m.message_id} m=${m} />`)}</ol>`
        : html`<${Empty}>No messages yet. Write the first one below; it starts a task for an agent.<//>`}
      <div ref=${end}></div>
      <form class="send" onSubmit=${send}>
        <label class="field grow"><span>Message</span>
          <textarea name="content" rows="3" value=${text} maxlength="100000" onInput=${(e) => setText(e.target.value)}
            onKeyDown=${(e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e); }}
            placeholder="Ask the agent… (Ctrl+Enter sends)"></textarea></label>
        <button type="submit" class="primary" disabled=${sending || !text.trim()}>${sending ? "Sending…" : "Send"}</button>
      </form>
      <${ErrorBox} error=${sendError} />
    </div>
    ${lastTask && html`<div>
      <p class="muted small">Latest task <a href=${`/tasks/${encodeURIComponent(lastTask)}`}>${lastTask}</a>
        ${linked[lastTask] && html` · <${Badge} value=${linked[lastTask]} />`}</p>
      <${LiveLog} key=${lastTask} taskId=${lastTask} compact=${true} limit=${500} />
    </div>`}
  </section>`;
}

export function Conversations({ params }) {
  return html`<div class="page">
    <h1>Conversations</h1>
    <div class="conv-layout">
      <${List} selected=${params.id} />
      ${params.id ? html`<${Thread} key=${params.id} id=${params.id} />`
        : html`<section class="card"><${Empty}>Pick a conversation, or start a new one.<//></section>`}
    </div>
  </div>`;
}
