"""Agent traces made by the real OpenTelemetry SDK, and OTLP bodies made by hand."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

PROTOBUF = "application/x-protobuf"


@contextmanager
def recorder(service: str = "research-bot") -> Iterator[tuple[Any, InMemorySpanExporter]]:
    """A tracer of a provider of its own whose finished spans are kept in memory (in the
    order they ended, as an SDK batch processor would export them)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    try:
        yield provider.get_tracer("tests.otlp"), memory
    finally:
        provider.shutdown()


def agent_run(
    tracer: Any,
    *,
    agent: str = "researcher",
    fail: str | None = None,
    content: bool = True,
) -> None:
    """One agent invocation as GenAI instrumentations emit it: an invoke_agent span with
    two chat calls (different models) and a tool call below it."""
    with tracer.start_as_current_span(
        f"invoke_agent {agent}",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent},
    ) as root:
        with tracer.start_as_current_span(
            "chat claude-sonnet-4",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "claude-sonnet-4",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 300,
            },
        ) as chat:
            if content:
                chat.add_event("gen_ai.user.message", {"content": "Find the flaky test"})
                chat.add_event("gen_ai.choice", {"content": "Let me grep for it."})
        with tracer.start_as_current_span(
            "execute_tool grep",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "grep"},
        ) as tool:
            tool.add_event("tool.output", {"lines": 3})
        with tracer.start_as_current_span(
            "chat claude-haiku-4",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "claude-haiku-4",
                "gen_ai.usage.input_tokens": 500,
                "gen_ai.usage.output_tokens": 100,
            },
        ) as chat:
            if content:
                chat.add_event("gen_ai.choice", {"content": "It is test_resume."})
        if fail:
            root.set_status(Status(StatusCode.ERROR, fail))


def task_id_of(root: ReadableSpan) -> str:
    ctx = root.get_span_context()
    assert ctx is not None
    return f"otel-{ctx.trace_id:032x}-{ctx.span_id:016x}"


def root_of(spans: Sequence[ReadableSpan]) -> ReadableSpan:
    return next(s for s in spans if s.parent is None)


def exporter(url: str, token: str, **kwargs: Any) -> OTLPSpanExporter:
    return OTLPSpanExporter(
        endpoint=f"{url}/v1/traces", headers={"Authorization": f"Bearer {token}"}, **kwargs
    )


def protobuf_body(spans: Sequence[ReadableSpan]) -> bytes:
    return bytes(encode_spans(spans).SerializeToString())


def json_body(spans: Sequence[ReadableSpan]) -> bytes:
    """OTLP/JSON of the spans: protobuf's JSON mapping with hex trace and span ids."""
    doc = json_format.MessageToDict(encode_spans(spans))
    for resource in doc.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return orjson.dumps(doc)


def gzipped(body: bytes) -> bytes:
    return gzip.compress(body)
