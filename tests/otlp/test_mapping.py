"""The pure part: OTLP spans to facts, and facts to task plans (otlp/spans.py, mapping.py)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags

from dashboard_api.otlp.mapping import plan_task, plan_tasks, slug, subtrees
from dashboard_api.otlp.spans import (
    MAX_TOKENS,
    STATUS_ERROR,
    Limits,
    SpanFacts,
    SpanRejected,
    clean,
    span_facts,
)
from dashboard_api.otlp.store import task_figures, task_record

TRACE = "ab" * 16


def facts(span_id: str, parent: str | None = None, start: int = 0, **kw: Any) -> SpanFacts:
    values: dict[str, Any] = {
        "trace_id": TRACE,
        "span_id": span_id,
        "parent_id": parent,
        "name": f"span {span_id}",
        "start_ns": 1_000 + start,
        "end_ns": 10_000 + start,
        "status": 0,
    }
    values.update(kw)
    return SpanFacts(**values)


def value(v: Any) -> AnyValue:
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    return AnyValue(double_value=v)


def proto_span(attributes: dict[str, Any], **kw: Any) -> Span:
    span = Span(
        trace_id=bytes.fromhex(TRACE),
        span_id=bytes.fromhex("01" * 8),
        name="chat",
        start_time_unix_nano=5,
        end_time_unix_nano=9,
        attributes=[KeyValue(key=k, value=value(v)) for k, v in attributes.items()],
    )
    for key, v in kw.items():
        setattr(span, key, v)
    return span


# --- spans -------------------------------------------------------------------------------


def test_the_generations_of_genai_attributes_are_read() -> None:
    messages = [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "Hi"}]},
    ]
    f = span_facts(
        proto_span(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-5",
                "gen_ai.usage.prompt_tokens": 10,  # the older names
                "gen_ai.usage.completion_tokens": 4.0,
                "gen_ai.usage.cache_read.input_tokens": "7",
                "gen_ai.usage.cache_creation_input_tokens": 2,
                "gen_ai.input.messages": json.dumps(messages),
                "gen_ai.completion.0.content": "Hello",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.usage.cost": "0.0012",
            }
        ),
        service="svc",
        limits=Limits(),
    )
    assert f.genai
    assert f.usage
    assert (f.input_tokens, f.output_tokens, f.cache_read_tokens, f.cache_write_tokens) == (
        10,
        4,
        7,
        2,
    )
    assert f.cost_usd == "0.0012"
    assert (f.prompt, f.completion) == ("Hi", "Hello")
    assert [c for _, c in f.chunks] == ["system: Be brief\n", "user: Hi\n", "assistant: Hello\n"]


def test_unusable_spans_are_rejected_with_a_reason() -> None:
    with pytest.raises(SpanRejected, match="invalid trace_id"):
        span_facts(proto_span({}, trace_id=b"\x00" * 16), service=None, limits=Limits())
    with pytest.raises(SpanRejected, match="invalid span_id"):
        span_facts(proto_span({}, span_id=b"\x01"), service=None, limits=Limits())
    with pytest.raises(SpanRejected, match="end before start"):
        span_facts(proto_span({}, end_time_unix_nano=1), service=None, limits=Limits())


def test_a_remote_parent_makes_a_root_and_text_is_made_storable() -> None:
    span = proto_span(
        {"gen_ai.agent.name": "a\x00b"},
        parent_span_id=bytes.fromhex("02" * 8),
        flags=SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
        | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK,
    )
    f = span_facts(span, service=None, limits=Limits())
    assert f.parent_id is None
    assert f.agent_name == "a\ufffdb"


def test_facts_survive_their_stored_form() -> None:
    f = facts("01", None, usage=True, input_tokens=3, chunks=(("stdout", "x"),))
    assert SpanFacts.from_doc(json.loads(json.dumps(f.to_doc()))) == f


# --- plans -------------------------------------------------------------------------------


def test_usage_counts_the_innermost_spans_only() -> None:
    # The agent span repeats the total of its calls (as some frameworks do): not twice.
    spans = [
        facts("01", None, agent_name="Coder", usage=True, input_tokens=30, output_tokens=3),
        facts("02", "01", start=1, operation="chat", request_model="m1", usage=True,
              input_tokens=10, output_tokens=1, genai=True),
        facts("03", "01", start=2, operation="chat", request_model="m2", usage=True,
              input_tokens=20, output_tokens=2, genai=True),
    ]  # fmt: skip
    (plan,) = plan_tasks(spans)
    assert (plan.input_tokens, plan.output_tokens) == (30, 3)
    assert plan.model == "m1"
    assert plan.agent_type == "coder"
    assert plan.task_id == f"otel-{TRACE}-01"
    # An agent span whose calls carry no usage counts its own.
    quiet = [spans[0], facts("02", "01", operation="chat", genai=True)]
    assert plan_tasks(quiet)[0].input_tokens == 30


def test_the_first_chat_by_start_names_the_model() -> None:
    spans = [
        facts("01", None, genai=True),
        facts("02", "01", start=50, operation="chat", request_model="late", genai=True),
        facts("03", "01", start=10, operation="embeddings", request_model="embed", genai=True),
        facts("04", "01", start=20, operation="chat", response_model="early", genai=True),
    ]
    assert plan_tasks(spans)[0].model == "early"


def test_a_plain_root_above_genai_spans_is_the_invocation() -> None:
    spans = [
        facts("01", None, service="Web API"),  # an HTTP server span, no gen_ai
        facts("02", "01", start=1, agent_name="Triage Bot", genai=True),
        facts("03", "02", start=2, agent_name="inner", genai=True),
        facts("09", "08", start=3, genai=True),  # its parent has not come: in no subtree
    ]
    (plan,) = plan_tasks(spans)
    assert plan.task_id.endswith("-01")
    assert plan.agent_type == "triage-bot"  # the agent nearest the root
    assert {s.span_id for s in plan.spans} == {"01", "02", "03"}
    assert plan_tasks([facts("01", None, service="Web API")]) == []


def test_status_times_input_and_result() -> None:
    spans = [
        facts("01", None, status=STATUS_ERROR, status_message="boom", genai=True),
        facts("02", "01", start=5, prompt="question", completion="first", genai=True,
              end_ns=100),
        facts("03", "01", start=1, completion="last", genai=True, end_ns=200),
    ]  # fmt: skip
    plan = plan_task(spans[0], spans)
    assert plan is not None
    assert (plan.status, plan.error) == ("failed", "boom")
    assert (plan.input_message, plan.result) == ("question", "last")
    assert plan.cost_usd is None


def test_reported_costs_are_summed_as_decimals() -> None:
    spans = [
        facts("01", None, genai=True),
        facts("02", "01", cost_usd="0.1", genai=True),
        facts("03", "01", cost_usd="0.2", genai=True),
    ]
    assert plan_tasks(spans)[0].cost_usd == Decimal("0.3")


def test_a_cycle_of_parents_is_in_no_subtree() -> None:
    spans = [facts("01", "02", genai=True), facts("02", "01", genai=True)]
    assert subtrees(spans) == []


@pytest.mark.parametrize(
    ("raw", "want"),
    [("Research Agent", "research-agent"), ("__x__", "x__"), ("ÄÖ", ""), ("a" * 99, "a" * 64)],
)
def test_slug(raw: str, want: str) -> None:
    assert slug(raw) == want


# --- any order ---------------------------------------------------------------------------


@st.composite
def trees(draw: st.DrawFn) -> list[SpanFacts]:
    """A root and up to 12 descendants, some with usage, models and content."""
    n = draw(st.integers(min_value=1, max_value=12))
    spans = [facts(f"{1:016x}", None, genai=draw(st.booleans()))]
    for i in range(2, n + 2):
        parent = spans[draw(st.integers(min_value=0, max_value=len(spans) - 1))].span_id
        usage = draw(st.booleans())
        spans.append(
            facts(
                f"{i:016x}",
                parent,
                start=draw(st.integers(min_value=0, max_value=50)),
                genai=usage or draw(st.booleans()),
                usage=usage,
                input_tokens=draw(st.integers(min_value=0, max_value=10**6)) if usage else 0,
                operation=draw(st.sampled_from([None, "chat", "execute_tool"])),
                request_model=draw(st.sampled_from([None, "m1", "m2"])),
                chunks=(("stdout", f"chunk {i}\n"),),
            )
        )
    return spans


@given(spans=trees(), data=st.data())
def test_the_plan_depends_on_the_set_of_spans_only(spans: list[SpanFacts], data: Any) -> None:
    shuffled = data.draw(st.permutations(spans))
    assert plan_tasks(shuffled) == plan_tasks(spans)
    again = plan_tasks(shuffled + shuffled[: len(shuffled) // 2])  # repeats change nothing
    assert [p.input_tokens for p in again] == [p.input_tokens for p in plan_tasks(spans)]


# --- any plan is a valid task ------------------------------------------------------------

_texts = st.text(max_size=300) | st.sampled_from(["", "-", "Ünïcode Agent", "a" * 400, "x\x00y"])


@st.composite
def odd_trees(draw: st.DrawFn) -> list[SpanFacts]:
    """Trees whose facts take any value span_facts can give (clean text, capped counts)."""
    n = draw(st.integers(min_value=0, max_value=5))
    spans = []
    for i in range(n + 1):
        text = draw(_texts)
        spans.append(
            facts(
                f"{i + 1:016x}",
                None if i == 0 else f"{draw(st.integers(1, i)):016x}",
                name=clean(text, 255) or "span",
                genai=True,
                status=draw(st.sampled_from([0, 1, 2])),
                status_message=clean(draw(_texts), 1000),
                service=clean(draw(_texts), 255) or None,
                agent_name=clean(draw(_texts), 255) or None,
                agent_id=clean(draw(_texts), 255) or None,
                request_model=clean(draw(_texts), 255) or None,
                usage=True,
                input_tokens=draw(st.integers(0, MAX_TOKENS)),
                output_tokens=draw(st.integers(0, MAX_TOKENS)),
                cost_usd=draw(st.sampled_from([None, "0", "0.000001", "999999999.99"])),
                prompt=clean(draw(_texts), 1000) or None,
                completion=clean(draw(_texts), 1000) or None,
            )
        )
    return spans


@given(spans=odd_trees())
def test_every_plan_makes_valid_service_bodies(spans: list[SpanFacts]) -> None:
    for plan in plan_tasks(spans):
        record = task_record(plan)  # TaskCreate and TaskUpdate validate here
        assert record.final.status in ("completed", "failed")
        assert task_figures(plan, final=False).status is None
