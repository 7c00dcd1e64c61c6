"""GenAI spans to tasks (docs/api.md §17), a pure function of the spans known so far.

An **invocation** is a root span (no parent, or a remote one) whose subtree carries a
`gen_ai.*` attribute or event, itself or below; each is one task:

- `task_id`: `otel-{trace_id}-{span_id}` of the root, so that every replica, and every
  retry of the same spans, names the same task.
- `agent_type`: the `gen_ai.agent.name` nearest the root (a slug of it), else the
  resource's `service.name`, else `otel`; `source`: `opentelemetry`.
- `model`: the model of the first chat span (by start time; `gen_ai.request.model`, else
  the response's), else of the first span that names one.
- tokens: summed over the subtree, counting only the innermost spans that carry usage (a
  span whose descendants report usage too is taken as their total: frameworks put the
  sum of an agent's calls on its own span as well).
- cost: the sum of `gen_ai.usage.cost` the same way when the producer reports it
  (`cost_basis: reported`), else computed from the tokens by the price table.
- status: `failed` when the root's span status is error (its message as the error),
  else `completed`; `created_at`/`started_at` the root's start, `completed_at` its end.
- input: the first user message in the subtree, else the root span's name; result: the
  last assistant message (by end time); output: each span's content and events as
  chunks, spans in start order.

`plan_tasks` is recomputed over the whole subtree whenever spans of it arrive, so spans
in any order or number of batches give the same plan once all have come.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from dashboard_api.otlp.spans import MAX_TOKENS, STATUS_ERROR, Chunk, SpanFacts

SOURCE = "opentelemetry"
FALLBACK_AGENT_TYPE = "otel"
# Operations that are one model call (GenAI conventions: chat, text_completion,
# generate_content); the first one names the task's model.
_CHAT_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
_INPUT_CAP = 1_000_000  # TaskCreate.input_message


@dataclass(frozen=True, slots=True)
class TaskPlan:
    """What one invocation's task is, given the spans known so far."""

    task_id: str
    root: SpanFacts
    agent_type: str
    input_message: str
    model: str | None
    status: str  # "completed" or "failed"
    error: str | None
    result: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal | None  # reported by the producer; None: computed by the service
    assigned_agent: str | None
    metadata: dict[str, object]
    spans: tuple[SpanFacts, ...]  # the subtree, in start order

    def chunks(self, only: Iterable[SpanFacts] | None = None) -> list[Chunk]:
        """The output chunks of the subtree's spans (of `only` these, when given)."""
        wanted = None if only is None else {s.span_id for s in only}
        return [c for s in self.spans if wanted is None or s.span_id in wanted for c in s.chunks]


def task_id_for(trace_id: str, span_id: str) -> str:
    return f"otel-{trace_id}-{span_id}"


def subtrees(spans: Iterable[SpanFacts]) -> list[tuple[SpanFacts, list[SpanFacts]]]:
    """Each root among `spans` (one trace) with its subtree (root first): the spans whose
    parent chain reaches it. Spans whose chain stops at a parent not among `spans` are
    in no subtree yet."""
    children: dict[str, list[SpanFacts]] = {}
    roots: list[SpanFacts] = []
    unique = {s.span_id: s for s in reversed(list(spans))}  # a repeated span counts once
    for span in unique.values():
        if span.parent_id is None:
            roots.append(span)
        else:
            children.setdefault(span.parent_id, []).append(span)
    out = []
    for root in sorted(roots, key=_start_order):
        seen = {root.span_id}
        tree = [root]
        stack = [root]
        while stack:
            for child in children.get(stack.pop().span_id, ()):
                if child.span_id not in seen:  # a malformed cycle ends here
                    seen.add(child.span_id)
                    tree.append(child)
                    stack.append(child)
        out.append((root, tree))
    return out


def plan_task(root: SpanFacts, tree: Sequence[SpanFacts]) -> TaskPlan | None:
    """The task of the invocation rooted at `root` (`tree`: its subtree, root included),
    or None when nothing in it is GenAI."""
    if not any(s.genai for s in tree):
        return None
    ordered = tuple(sorted(tree, key=_start_order))
    counted = _innermost(tree, lambda s: s.usage)
    costed = _innermost(tree, lambda s: s.cost_usd is not None)
    failed = root.status == STATUS_ERROR
    named = [s for s in tree if s.agent_name]
    if len(named) > 1:  # the nearest the root first (depths only then: few trees need them)
        depth = _depths(root, tree)
        named.sort(key=lambda s: (depth[s.span_id], *_start_order(s)))
    agent = root.agent_name or (named[0].agent_name if named else None)
    agent_id = root.agent_id or next((s.agent_id for s in named if s.agent_id), None)
    prompt = next((s.prompt for s in ordered if s.prompt), None)
    last = sorted((s for s in tree if s.completion), key=lambda s: (s.end_ns, s.span_id))
    return TaskPlan(
        task_id=task_id_for(root.trace_id, root.span_id),
        root=root,
        agent_type=slug(agent) or slug(root.service) or FALLBACK_AGENT_TYPE,
        input_message=(prompt or root.name)[:_INPUT_CAP],
        model=_model(ordered),
        status="failed" if failed else "completed",
        error=(root.status_message or "The span's status is error.") if failed else None,
        result=last[-1].completion if last else None,
        input_tokens=_total(s.input_tokens for s in counted),
        output_tokens=_total(s.output_tokens for s in counted),
        cache_read_tokens=_total(s.cache_read_tokens for s in counted),
        cache_write_tokens=_total(s.cache_write_tokens for s in counted),
        cost_usd=sum((Decimal(s.cost_usd or 0) for s in costed), Decimal(0)) if costed else None,
        assigned_agent=agent_id,
        metadata=_metadata(root, tree),
        spans=ordered,
    )


def plan_tasks(spans: Iterable[SpanFacts]) -> list[TaskPlan]:
    """Every invocation among the spans of one trace."""
    plans = (plan_task(root, tree) for root, tree in subtrees(spans))
    return [p for p in plans if p is not None]


_NOT_SLUG = re.compile(r"[^a-z0-9_.-]+")


def slug(value: str | None) -> str:
    """`value` as an agent-type slug (`[a-z0-9][a-z0-9_.-]{0,63}`), or "" if nothing is left."""
    if not value:
        return ""
    text = _NOT_SLUG.sub("-", value.lower()).lstrip("_.-")[:64].rstrip("-")
    return text


def _start_order(span: SpanFacts) -> tuple[int, str]:
    return span.start_ns, span.span_id


def _depths(root: SpanFacts, tree: Sequence[SpanFacts]) -> dict[str, int]:
    parent = {s.span_id: s.parent_id for s in tree}
    depths = {root.span_id: 0}

    def depth(span_id: str) -> int:
        chain = []
        while span_id not in depths:
            chain.append(span_id)
            span_id = parent[span_id] or root.span_id
        base = depths[span_id]
        for i, sid in enumerate(reversed(chain), start=1):
            depths[sid] = base + i
        return depths[chain[0]] if chain else base

    for s in tree:
        depth(s.span_id)
    return depths


def _innermost(tree: Sequence[SpanFacts], carries: Callable[[SpanFacts], bool]) -> list[SpanFacts]:
    """The spans that carry a figure (per `carries`) with no descendant carrying it."""
    test = carries
    by_id = {s.span_id: s for s in tree}
    has_below: set[str] = set()
    for span in tree:
        if test(span):
            parent = span.parent_id
            while parent is not None and parent in by_id and parent not in has_below:
                has_below.add(parent)
                parent = by_id[parent].parent_id
    return [s for s in tree if test(s) and s.span_id not in has_below]


def _total(values: Iterable[int]) -> int:
    return min(sum(values), MAX_TOKENS)


def _model(ordered: Sequence[SpanFacts]) -> str | None:
    for span in ordered:
        if span.operation in _CHAT_OPERATIONS and (span.request_model or span.response_model):
            return span.request_model or span.response_model
    for span in ordered:
        if span.request_model or span.response_model:
            return span.request_model or span.response_model
    return None


def _metadata(root: SpanFacts, tree: Sequence[SpanFacts]) -> dict[str, object]:
    otel: dict[str, object] = {"trace_id": root.trace_id, "span_id": root.span_id}
    if root.service:
        otel["service_name"] = root.service
    conversation = root.conversation_id or next(
        (s.conversation_id for s in tree if s.conversation_id), None
    )
    if conversation:
        otel["conversation_id"] = conversation
    return {"otel": otel}
