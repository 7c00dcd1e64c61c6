"""A request's statements do not grow with the invocations it completes: the tasks, their
history and output, and the task-write hooks (analytics, budgets) are written for all of
them at once (docs/otlp.md, "Storing it")."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from sqlalchemy import event, func, select

from dashboard_api.db.models import Task
from dashboard_api.settings import Settings
from tests.otlp.helpers import PROTOBUF
from tests.support.env import Backend
from tests.support.servers import serve_app
from tests.support.tokens import make_tokens

START_NS = 1_765_000_000_000_000_000


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _invocation() -> list[Span]:
    """An agent run: two chat calls with usage and content, then the root."""
    trace, root = uuid.uuid4().bytes, uuid.uuid4().bytes[:8]
    chats = [
        Span(
            trace_id=trace,
            span_id=uuid.uuid4().bytes[:8],
            parent_span_id=root,
            name="chat",
            start_time_unix_nano=START_NS + i,
            end_time_unix_nano=START_NS + 10**9,
            attributes=[
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.request.model", "claude-sonnet-4"),
                _kv("gen_ai.usage.input_tokens", 100),
                _kv("gen_ai.completion", f"answer {i}"),
            ],
        )
        for i in range(2)
    ]
    top = Span(
        trace_id=trace,
        span_id=root,
        name="invoke_agent",
        start_time_unix_nano=START_NS,
        end_time_unix_nano=START_NS + 2 * 10**9,
        attributes=[_kv("gen_ai.agent.name", "counted")],
    )
    return [*chats, top]


def _body(invocations: int) -> bytes:
    spans = [s for _ in range(invocations) for s in _invocation()]
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )
    return bytes(request.SerializeToString())


@contextmanager
def _counting(engine: Any) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def test_statements_per_request_do_not_grow_with_its_invocations(
    backend: Backend,
) -> None:
    # Periodic jobs off: they run statements of their own on the same engine.
    settings: Settings = backend.settings(
        agent_sweep_interval_seconds=0,
        analytics_fold_interval_seconds=0,
        budgets_evaluate_interval_seconds=0,
        alerts_evaluate_interval_seconds=0,
        alerts_sender_interval_seconds=0,
        otlp_prune_interval_seconds=0,
        lease_reap_interval_seconds=0,
    )
    async with serve_app(settings) as (app, port):
        tokens = await make_tokens(app)
        headers = {**tokens.headers("agent"), "Content-Type": PROTOBUF}
        counts: list[int] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            # The first request prepares what is prepared once (token lookup, caches).
            assert (await http.post("/v1/traces", content=_body(1), headers=headers)).is_success
            for invocations in (3, 30):
                with _counting(app.state.ctx.db.engine) as seen:
                    r = await http.post("/v1/traces", content=_body(invocations), headers=headers)
                assert r.status_code == 200, r.text
                counts.append(len(seen))
        async with app.state.ctx.db.read() as session:
            made = await session.scalar(
                select(func.count()).select_from(Task).where(Task.agent_type == "counted")
            )
    assert made == 34
    assert counts[0] == counts[1], counts
    # BEGIN/COMMIT aside: locks, spans, earlier spans, tasks, events, output, analytics,
    # budgets, roots marked (and the token lookup).
    assert counts[1] <= 14, counts
