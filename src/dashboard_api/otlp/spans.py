"""One OTLP span reduced to what the task mapping needs: `SpanFacts` (pure, no I/O).

The facts are what is kept of a span while its invocation is assembled (`otlp_spans`),
so they hold only the GenAI semantic-convention attributes the mapping reads, the
span's identity, times and status, and its content (prompts, completions, events) as
output chunks, every string cut to the attribute cap.

GenAI attributes read (several generations of the conventions are in use):
`gen_ai.operation.name`, `gen_ai.agent.name`, `gen_ai.agent.id`, `gen_ai.request.model`,
`gen_ai.response.model`, `gen_ai.usage.input_tokens` (`prompt_tokens`),
`gen_ai.usage.output_tokens` (`completion_tokens`), `gen_ai.usage.cache_read.input_tokens`
(`cache_read_input_tokens`), `gen_ai.usage.cache_creation.input_tokens`
(`cache_creation_input_tokens`), `gen_ai.usage.cost` (USD, when the producer reports it),
`gen_ai.conversation.id`; content as `gen_ai.input.messages` / `gen_ai.output.messages` /
`gen_ai.system_instructions` (JSON), `gen_ai.prompt` / `gen_ai.completion`, indexed
`gen_ai.prompt.N.role|content` / `gen_ai.completion.N.role|content`, and span events
(`gen_ai.content.prompt`, `gen_ai.user.message`, `gen_ai.choice`, `exception`, any other).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status

STATUS_UNSET, STATUS_OK, STATUS_ERROR = (
    Status.STATUS_CODE_UNSET,
    Status.STATUS_CODE_OK,
    Status.STATUS_CODE_ERROR,
)
_REMOTE_PARENT = SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
# Token counts are capped where the task schema caps them (2**62).
MAX_TOKENS = 2**62
Chunk = tuple[str, str]  # (stream, content)


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one span may keep (settings `otlp_max_attribute_chars`, ...)."""

    max_chars: int = 64 * 1024
    max_events: int = 128


# Not frozen, though never changed once made: a frozen dataclass of 25 fields took ten
# times as long to construct (each field set through object.__setattr__), a tenth of a
# span's server CPU when every span of a request gets one.
@dataclass(slots=True)
class SpanFacts:
    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    # The parent in this trace, or None for a root: no parent, or a remote one (the span
    # starts this process's part of a distributed trace).
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status: int  # STATUS_UNSET, STATUS_OK or STATUS_ERROR
    status_message: str = ""
    service: str | None = None
    genai: bool = False  # any gen_ai.* attribute or event
    operation: str | None = None
    agent_name: str | None = None
    agent_id: str | None = None
    request_model: str | None = None
    response_model: str | None = None
    usage: bool = False  # carries gen_ai.usage.* token counts
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: str | None = None  # a decimal string, when reported
    conversation_id: str | None = None
    prompt: str | None = None  # the first user message
    completion: str | None = None  # the last assistant message
    chunks: tuple[Chunk, ...] = field(default=())

    def to_doc(self) -> dict[str, Any]:
        """The stored form (JSON-able; fields at their default left out). Written out
        field by field: a loop over the fields took as long as reading the span."""
        doc: dict[str, Any] = {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "status": self.status,
        }
        if self.status_message:
            doc["status_message"] = self.status_message
        if self.service is not None:
            doc["service"] = self.service
        if self.genai:
            doc["genai"] = True
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        if self.usage:
            doc["usage"] = True
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if value:
                doc[name] = value
        if self.cost_usd is not None:
            doc["cost_usd"] = self.cost_usd
        if self.conversation_id is not None:
            doc["conversation_id"] = self.conversation_id
        if self.prompt is not None:
            doc["prompt"] = self.prompt
        if self.completion is not None:
            doc["completion"] = self.completion
        if self.chunks:
            doc["chunks"] = self.chunks
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SpanFacts:
        chunks = doc.pop("chunks", ())
        return cls(**doc, chunks=tuple((str(s), str(c)) for s, c in chunks))


_TEXT_FIELDS = ("operation", "agent_name", "agent_id", "request_model", "response_model")
_COUNT_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


class SpanRejected(ValueError):
    """A span that cannot be stored; its message is the reason, in a few words."""


def span_facts(span: Span, *, service: str | None, limits: Limits) -> SpanFacts:
    """The facts of one decoded span; `SpanRejected` for an unusable one."""
    return _read_span(span, clean(service, 255) or None, limits.max_chars, limits.max_events)


def request_facts(
    export: ExportTraceServiceRequest, limits: Limits
) -> tuple[list[SpanFacts], Counter[str]]:
    """The facts of every span of a request, and the reasons for those rejected (how
    many spans each)."""
    out: list[SpanFacts] = []
    rejected: Counter[str] = Counter()
    cap, max_events = limits.max_chars, limits.max_events
    read = _read_span
    for resource_spans in export.resource_spans:
        service = clean(service_name(resource_spans.resource.attributes), 255) or None
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                try:
                    out.append(read(span, service, cap, max_events))
                except SpanRejected as why:
                    rejected[str(why)] += 1
    return out, rejected


def _read_span(span: Span, service: str | None, cap: int, max_events: int) -> SpanFacts:
    """`span_facts`, `service` made storable already.

    Read field by field from the message (no dict of it is made): the attributes a
    model call carries (its operation, model, token counts, agent name) are taken on the
    spot; content, costs and events, rarer, go through a `_Reader`."""
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
        raise SpanRejected("invalid trace_id")
    if len(span_id) != 8 or span_id == _ZERO_SPAN:
        raise SpanRejected("invalid span_id")
    if parent and (len(parent) != 8 or parent == _ZERO_SPAN):
        raise SpanRejected("invalid parent_span_id")
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if start == 0 or end < start:
        raise SpanRejected("missing start time or end before start")
    got, reader = _attributes(span, cap)
    if span.events:
        if reader is None:
            reader = _Reader(cap)
        for event in span.events[:max_events]:
            reader.event(event.name, event.attributes)
    name = span.name
    if len(name) > 255 or not name.isascii() or "\x00" in name:
        name = clean(name, 255)
    status = span.status
    code, message = status.code, status.message
    facts = SpanFacts(
        trace_id.hex(),
        span_id.hex(),
        parent.hex() if parent and not span.flags & _REMOTE_PARENT else None,
        name or "span",
        start,
        end,
        code if code in (1, 2) else STATUS_UNSET,
        clean(message, cap) if message else "",
        service,
        *got,
    )
    if reader is not None:
        facts.genai = facts.genai or reader.genai
        facts.cost_usd, facts.prompt, facts.completion = (
            reader.cost,
            reader.prompt,
            reader.completion,
        )
        facts.chunks = tuple(reader.chunks)
    return facts


def _attributes(span: Span, cap: int) -> tuple[list[Any], _Reader | None]:
    """The SpanFacts fields from `genai` to `conversation_id` that the span's attributes
    give (the cost left None), and the `_Reader` of the others, if any."""
    # genai, the texts in _TEXT_KEYS' order, usage, the counts, the cost, the conversation
    # (as `_FAST` numbers them).
    got: list[Any] = [False, None, None, None, None, None, False, 0, 0, 0, 0, None, None]
    short = 255 if cap >= 255 else cap  # `clean` replaces character for character
    reader: _Reader | None = None
    for kv in span.attributes:
        key = kv.key
        slot = _FAST.get(key)
        if slot is None:
            if not key.startswith("gen_ai."):
                continue
            got[0] = True  # content, cost, ...: the reader's
            if reader is None:
                reader = _Reader(cap)
            reader.attribute(kv)
            continue
        got[0] = True
        value = kv.value
        if slot < 7 or slot == 12:  # text; `string_value` is "" unless it is a string
            text = value.string_value
            if text:
                if len(text) > short or not text.isascii() or "\x00" in text:
                    text = clean(text, short)
                got[slot] = text or None
            continue
        # A count; `int_value` is 0 unless it is an int, so a positive one is the int.
        n = value.int_value
        if not 0 < n <= MAX_TOKENS:
            n = _count(value)
            if n is None:
                continue
        got[6] = True
        got[slot] = n
    if reader is not None:
        reader.end_attributes()
    return got, reader


_ZERO_TRACE, _ZERO_SPAN = bytes(16), bytes(8)
# The attributes `span_facts` reads itself, by their place in `_attributes`' list.
_FAST: dict[str, int] = {}


# --- strings -----------------------------------------------------------------------------

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean(value: str | None, cap: int) -> str:
    """`value` cut to `cap` characters, without what no backend stores (NUL, surrogates)."""
    if not value:
        return ""
    if len(value) > cap:
        value = value[:cap]
    if value.isascii() and "\x00" not in value:
        return value  # the common case, without the regular expression
    return _UNSTORABLE.sub("\ufffd", value)


def _short(value: str | None) -> str | None:
    return value[:255] if value else None


# --- attribute values ----------------------------------------------------------------------

_TOKENS = {
    "gen_ai.usage.input_tokens": "input",
    "gen_ai.usage.prompt_tokens": "input",
    "gen_ai.usage.output_tokens": "output",
    "gen_ai.usage.completion_tokens": "output",
    "gen_ai.usage.cache_read.input_tokens": "cache_read",
    "gen_ai.usage.cache_read_input_tokens": "cache_read",
    "gen_ai.usage.cache_creation.input_tokens": "cache_write",
    "gen_ai.usage.cache_creation_input_tokens": "cache_write",
}
# The order of their SpanFacts fields: operation, agent name and id, request and
# response model, then the conversation.
_TEXT_KEYS = (
    "gen_ai.operation.name",
    "gen_ai.agent.name",
    "gen_ai.agent.id",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.conversation.id",
)
_SLOTS = {"input": 7, "output": 8, "cache_read": 9, "cache_write": 10}
_FAST.update({key: _SLOTS[kind] for key, kind in _TOKENS.items()})
_FAST.update({key: 1 + i for i, key in enumerate(_TEXT_KEYS[:5])})
_FAST[_TEXT_KEYS[5]] = 12
_INDEXED = re.compile(r"^gen_ai\.(prompt|completion)\.(\d{1,4})\.(role|content)$")
_CONTENT_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _plain(value: AnyValue, cap: int, depth: int = 0) -> Any:
    """An AnyValue as a plain Python value (strings cut to `cap`; deep nesting cut off)."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return clean(value.string_value, cap)
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "bytes_value":
        return value.bytes_value[: cap // 2].hex()
    if depth >= 4:
        return None
    if kind == "array_value":
        return [_plain(v, cap, depth + 1) for v in value.array_value.values[:100]]
    if kind == "kvlist_value":
        return {
            clean(kv.key, 255): _plain(kv.value, cap, depth + 1)
            for kv in value.kvlist_value.values[:100]
        }
    return None


def _count(value: AnyValue) -> int | None:
    """A token count: an int, an integral double or a decimal string; None otherwise."""
    kind = value.WhichOneof("value")
    number: Any
    if kind == "int_value":
        number = value.int_value
    elif kind == "double_value":
        number = value.double_value
        if number != number or number in (float("inf"), float("-inf")):
            return None
    elif kind == "string_value" and value.string_value.strip().isdigit():
        number = int(value.string_value.strip()[:20])
    else:
        return None
    return max(0, min(int(number), MAX_TOKENS))


def _cost(value: AnyValue) -> str | None:
    kind = value.WhichOneof("value")
    raw: Any = None
    if kind == "double_value":
        raw = repr(value.double_value)
    elif kind == "int_value":
        raw = str(value.int_value)
    elif kind == "string_value":
        raw = value.string_value.strip()[:40]
    try:
        amount = Decimal(raw) if raw is not None else None
    except InvalidOperation:
        return None
    if amount is None or not amount.is_finite() or amount < 0 or amount > 10**9:
        return None
    return str(amount)


class _Reader:
    """Collects the content of one span (messages, events) and its reported cost, from
    the attributes `span_facts` does not read itself and the events, in order."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.genai = False
        self.cost: str | None = None
        self.prompt: str | None = None
        self.completion: str | None = None
        self.chunks: list[Chunk] = []
        self._indexed: dict[tuple[str, int], dict[str, str]] = {}

    def attribute(self, kv: KeyValue) -> None:
        """A `gen_ai.*` attribute other than the token counts and texts of `_FAST`."""
        key = kv.key
        value = kv.value
        if key == "gen_ai.usage.cost":
            self.cost = _cost(value)
        elif key in ("gen_ai.input.messages", "gen_ai.system_instructions"):
            self._messages(_plain(value, self.cap), default_role="user")
        elif key == "gen_ai.output.messages":
            self._messages(_plain(value, self.cap), default_role="assistant")
        elif key in ("gen_ai.prompt", "gen_ai.completion"):
            text = _as_text(_plain(value, self.cap))
            if text:
                self._message("user" if key == "gen_ai.prompt" else "assistant", text)
        elif match := _INDEXED.match(key):
            which, index, part = match.group(1), int(match.group(2)), match.group(3)
            slot = self._indexed.setdefault((which, index), {})
            slot[part] = _as_text(_plain(value, self.cap))

    def end_attributes(self) -> None:
        """Emit the indexed messages (`gen_ai.prompt.N.*`, then `gen_ai.completion.N.*`),
        whose role and content come as separate attributes in any order."""
        for (which, _), slot in sorted(self._indexed.items()):
            role = slot.get("role") or ("user" if which == "prompt" else "assistant")
            if slot.get("content"):
                self._message(role, slot["content"])
        self._indexed.clear()

    def event(self, name: str, attributes: Sequence[KeyValue]) -> None:
        plain = {kv.key: _plain(kv.value, self.cap) for kv in attributes[:64]}
        if name.startswith("gen_ai."):
            self.genai = True
        if name == "exception":
            kind = plain.get("exception.type") or "exception"
            message = plain.get("exception.message") or ""
            self.chunks.append(("stderr", clean(f"{kind}: {message}\n", self.cap)))
            return
        if name in ("gen_ai.content.prompt", "gen_ai.content.completion"):
            key = "gen_ai.prompt" if name.endswith("prompt") else "gen_ai.completion"
            text = _as_text(plain.get(key))
            if text:
                self._message("user" if key == "gen_ai.prompt" else "assistant", text)
                return
        if name in _CONTENT_EVENTS:
            text = _as_text(plain.get("content"))
            if text:
                self._message(str(plain.get("role") or _CONTENT_EVENTS[name]), text)
                return
        if name == "gen_ai.choice":
            message = plain.get("message")
            text = _as_text(message.get("content") if isinstance(message, dict) else message)
            text = text or _as_text(plain.get("content"))
            if text:
                self._message("assistant", text)
                return
        if plain:
            shown = ", ".join(f"{k}={_as_text(v)}" for k, v in plain.items())
            self.chunks.append(("system", clean(f"[{name}] {shown}\n", self.cap)))
        else:
            self.chunks.append(("system", clean(f"[{name}]\n", self.cap)))

    def _messages(self, value: Any, *, default_role: str) -> None:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                self._message(default_role, value)
                return
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            return
        for item in value[:1000]:
            if isinstance(item, dict):
                role = str(item.get("role") or default_role)
                text = _message_text(item)
            else:
                role, text = default_role, _as_text(item)
            if text:
                self._message(role, text)

    def _message(self, role: str, text: str) -> None:
        role = clean(role, 32) or "user"
        if role == "user" and self.prompt is None:
            self.prompt = text
        if role == "assistant":
            self.completion = text
        self.chunks.append(("stdout", clean(f"{role}: {text}\n", self.cap)))


def _message_text(item: dict[str, Any]) -> str:
    """The text of a structured message: `content`, or its text `parts`."""
    if "content" in item:
        return _as_text(item["content"])
    parts = item.get("parts")
    if isinstance(parts, list):
        texts = []
        for part in parts:
            if isinstance(part, dict):
                content = part.get("content")
                if content is None and part.get("type") == "tool_call":
                    content = f"tool call {part.get('name')}({_as_text(part.get('arguments'))})"
                if content is None and part.get("type") == "tool_call_response":
                    content = _as_text(part.get("response"))
                texts.append(_as_text(content))
            else:
                texts.append(_as_text(part))
        return "\n".join(t for t in texts if t)
    return ""


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return "\n".join(t for t in (_message_text(v) for v in value) if t)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def service_name(attributes: Iterable[KeyValue]) -> str | None:
    """`service.name` of a resource, when it is a string."""
    for kv in attributes:
        if kv.key == "service.name" and kv.value.WhichOneof("value") == "string_value":
            return kv.value.string_value
    return None
