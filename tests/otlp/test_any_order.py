"""Spans in any number of batches, in any order, some sent twice: one task, stored once,
with the figures the whole invocation gives (the pure plan is the oracle)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from sqlalchemy import func, select

from dashboard_api.db.models import OtlpSpan
from dashboard_api.otlp.mapping import plan_task, subtrees
from dashboard_api.otlp.spans import Limits, span_facts
from dashboard_api.otlp.store import prune_spans
from tests.otlp.helpers import PROTOBUF


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


@st.composite
def invocations(draw: st.DrawFn) -> list[Span]:
    """A root and up to 10 descendants of one new trace, some of them chat calls."""
    trace = uuid.uuid4().bytes
    n = draw(st.integers(min_value=0, max_value=10))
    ids = [i.to_bytes(8, "big") for i in range(1, n + 2)]
    spans = []
    for i, span_id in enumerate(ids):
        parent = b"" if i == 0 else ids[draw(st.integers(min_value=0, max_value=i - 1))]
        start = 1_765_000_000_000_000_000 + draw(st.integers(0, 10**9))
        attributes = []
        if i == 0:
            attributes.append(_kv("gen_ai.agent.name", "prop-agent"))
        elif draw(st.booleans()):
            attributes += [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.request.model", draw(st.sampled_from(["m1", "m2"]))),
                _kv("gen_ai.usage.input_tokens", draw(st.integers(0, 10**6))),
                _kv("gen_ai.usage.output_tokens", draw(st.integers(0, 10**5))),
                _kv("gen_ai.completion", f"answer {i}"),
            ]
        spans.append(
            Span(
                trace_id=trace,
                span_id=span_id,
                parent_span_id=parent,
                name=f"span {i}",
                start_time_unix_nano=start,
                end_time_unix_nano=start + 3 * 10**9,
                attributes=attributes,
                status=Status(code=draw(st.sampled_from(list(Status.StatusCode.values())))),
            )
        )
    return spans


def _body(spans: list[Span]) -> bytes:
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )
    return bytes(request.SerializeToString())


@settings(max_examples=10)
@given(spans=invocations(), data=st.data())
async def test_any_batching_gives_the_whole_invocations_task(
    client: Any, auth: Callable[[str], dict[str, str]], spans: list[Span], data: Any
) -> None:
    order = data.draw(st.permutations(spans))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(order)), max_size=4)))
    batches = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True)]
    batches = [b for b in batches if b]
    repeats = data.draw(st.lists(st.sampled_from(batches), max_size=2))
    headers = {**auth("agent"), "Content-Type": PROTOBUF}
    for batch in [*batches, *repeats]:
        r = await client.post("/v1/traces", content=_body(batch), headers=headers)
        assert r.status_code == 200, r.text

    facts = [span_facts(s, service=None, limits=Limits()) for s in spans]
    ((root, tree),) = subtrees(facts)
    want = plan_task(root, tree)
    assert want is not None
    r = await client.get(f"/api/tasks/{want.task_id}/logs/full", headers=auth("user"))
    assert r.status_code == 200, r.text
    log = r.json()
    task = log["task"]
    assert task["status"] == want.status
    assert task["model"] == want.model
    assert (task["input_tokens"], task["output_tokens"]) == (want.input_tokens, want.output_tokens)
    # The log holds the content of the spans joined to the root when it came, once.
    root_batch = next(i for i, b in enumerate(batches) if spans[0] in b)
    arrived = {s.span_id.hex() for b in batches[: root_batch + 1] for s in b}
    ((_, joined),) = subtrees(f for f in facts if f.span_id in arrived)
    at_root = plan_task(root, joined)
    assert at_root is not None
    chunks = [c for _, c in at_root.chunks()]
    assert [c["content"] for c in log["chunks"]] == chunks
    assert [e["status"] for e in log["events"]] == ["running", want.status]
    listed = await client.get(
        "/api/tasks", params={"agent_type": "prop-agent", "per_page": 200}, headers=auth("user")
    )
    assert [t["task_id"] for t in listed.json()["items"]].count(want.task_id) == 1


async def test_spans_past_retention_are_pruned_and_a_resend_makes_no_second_task(
    app: Any, client: Any, auth: Callable[[str], dict[str, str]]
) -> None:
    trace = uuid.uuid4().bytes
    root = Span(
        trace_id=trace,
        span_id=b"\x00" * 7 + b"\x01",
        name="invoke_agent pruned",
        start_time_unix_nano=1_765_000_000_000_000_000,
        end_time_unix_nano=1_765_000_001_000_000_000,
        attributes=[_kv("gen_ai.agent.name", "pruned"), _kv("gen_ai.completion", "done")],
    )
    headers = {**auth("agent"), "Content-Type": PROTOBUF}
    assert (await client.post("/v1/traces", content=_body([root]), headers=headers)).is_success
    ctx = app.state.ctx
    settings = ctx.settings
    now = ctx.clock.now()
    retention = settings.otlp_span_retention_seconds
    assert await prune_spans(ctx.db, now=now, retention_seconds=retention) == 0
    later = now + timedelta(seconds=retention + 1)
    assert await prune_spans(ctx.db, now=later, retention_seconds=retention) == 1
    async with ctx.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(OtlpSpan)) == 0
    # Sent again after the prune: the span is new again, its task is not made twice.
    assert (await client.post("/v1/traces", content=_body([root]), headers=headers)).is_success
    task_id = f"otel-{trace.hex()}-{root.span_id.hex()}"
    log = (await client.get(f"/api/tasks/{task_id}/logs/full", headers=auth("user"))).json()
    assert log["last_seq"] == 1
    assert [e["status"] for e in log["events"]] == ["running", "completed"]
