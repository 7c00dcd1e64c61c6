"""A real OpenTelemetry SDK exports agent traces to a real server (uvicorn), on both
backends: the tasks appear with the right figures, live on /ws, once whatever the
retries and the order of the batches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.otlp.helpers import agent_run, exporter, recorder, root_of, task_id_of
from tests.support.servers import LiveServer
from tests.support.ws import recv_until, send_json

# Prices (settings' defaults): claude-sonnet-4 is $3 in / $15 out per million tokens. The
# task's model is the first chat's, and the computed cost prices all its tokens by it.
EXPECTED_COST = (1700 * 3 + 400 * 15) / 1_000_000


async def _export(exp: OTLPSpanExporter, spans: Any) -> SpanExportResult:
    # The SDK exporter is synchronous: in a thread, so that the server (same loop) runs.
    return await asyncio.to_thread(exp.export, spans)


async def _task(live: LiveServer, task_id: str) -> dict[str, Any]:
    r = await live.http.get(f"/api/tasks/{task_id}/logs/full", headers=live.headers("user"))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _ms(ns: int) -> str:
    from datetime import UTC, datetime

    return (
        datetime.fromtimestamp(ns // 1_000_000 / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        + "Z"
    )


async def test_an_agent_trace_becomes_a_task_live_on_ws(live: LiveServer) -> None:
    with recorder() as (tracer, memory):
        agent_run(tracer)
        spans = memory.get_finished_spans()
    root = root_of(spans)
    task_id = task_id_of(root)
    async with await live.connect("user") as ws:
        await send_json(ws, {"type": "subscribe", "channel": "tasks"})
        await recv_until(ws, lambda m: m["type"] == "subscribed")
        result = await _export(exporter(live.url, live.tokens.agent), spans)
        assert result is SpanExportResult.SUCCESS
        seen = await recv_until(
            ws,
            lambda m: (
                m["type"] == "task_status"
                and m["task_id"] == task_id
                and m["status"] == "completed"
            ),
        )
        # One task_status: the task appears already ended, with its figures.
        assert [m["status"] for m in seen if m.get("task_id") == task_id] == ["completed"]
        assert seen[-1]["input_tokens"] == 1700
        # The output went out on the task's channel: its replay holds every chunk.
        await send_json(ws, {"type": "subscribe", "channel": f"task:{task_id}", "since_seq": 0})
        replay = await recv_until(ws, lambda m: m["type"] == "task_output" and m["seq"] == 4)
    outputs = [m for m in replay if m["type"] == "task_output"]
    assert [m["seq"] for m in outputs] == [1, 2, 3, 4]
    assert outputs[0]["content"] == "user: Find the flaky test\n"

    log = await _task(live, task_id)
    task = log["task"]
    assert task["status"] == "completed"
    assert task["agent_type"] == "researcher"
    assert task["source"] == "opentelemetry"
    assert task["model"] == "claude-sonnet-4"
    assert (task["input_tokens"], task["output_tokens"]) == (1700, 400)
    assert task["cost_basis"] == "computed"
    assert task["cost_usd"] == pytest.approx(EXPECTED_COST, abs=1e-9)
    assert task["input_message"] == "Find the flaky test"
    assert task["result"] == "It is test_resume."
    assert task["started_at"] == task["created_at"] == _ms(root.start_time or 0)
    assert task["completed_at"] == _ms(root.end_time or 0)
    assert task["metadata"]["otel"]["service_name"] == "research-bot"
    assert [e["status"] for e in log["events"]] == ["running", "completed"]
    assert log["output"].endswith("assistant: It is test_resume.\n")


async def test_an_error_status_fails_the_task_with_its_message(live: LiveServer) -> None:
    with recorder() as (tracer, memory):
        agent_run(tracer, fail="rate limited by the model")
        spans = memory.get_finished_spans()
    exp = exporter(live.url, live.tokens.agent, compression=Compression.Gzip)
    assert await _export(exp, spans) is SpanExportResult.SUCCESS
    task = (await _task(live, task_id_of(root_of(spans))))["task"]
    assert task["status"] == "failed"
    assert task["error"] == "rate limited by the model"
    assert task["input_tokens"] == 1700


async def test_retries_of_the_same_batch_store_it_once(live: LiveServer) -> None:
    with recorder() as (tracer, memory):
        agent_run(tracer)
        spans = memory.get_finished_spans()
    exp = exporter(live.url, live.tokens.agent)
    for _ in range(3):
        assert await _export(exp, spans) is SpanExportResult.SUCCESS
    log = await _task(live, task_id_of(root_of(spans)))
    assert log["last_seq"] == 4
    assert (log["task"]["input_tokens"], log["task"]["output_tokens"]) == (1700, 400)
    assert [e["status"] for e in log["events"]] == ["running", "completed"]
    r = await live.http.get(
        "/api/tasks", params={"source": "opentelemetry"}, headers=live.headers("user")
    )
    assert r.json()["total"] == 1


async def test_children_first_then_the_root_in_later_batches(live: LiveServer) -> None:
    with recorder() as (tracer, memory):
        agent_run(tracer)
        spans = memory.get_finished_spans()
    root = root_of(spans)
    children = [s for s in spans if s is not root]
    exp = exporter(live.url, live.tokens.agent)
    # Children one by one, the last first, then the root: no task until the root comes.
    for span in reversed(children):
        assert await _export(exp, [span]) is SpanExportResult.SUCCESS
    r = await live.http.get(f"/api/tasks/{task_id_of(root)}", headers=live.headers("user"))
    assert r.status_code == 404
    assert await _export(exp, [root]) is SpanExportResult.SUCCESS
    log = await _task(live, task_id_of(root))
    assert log["task"]["model"] == "claude-sonnet-4"
    assert (log["task"]["input_tokens"], log["task"]["output_tokens"]) == (1700, 400)
    assert log["last_seq"] == 4  # every child's content, in start order
    assert log["output"].startswith("user: Find the flaky test\n")


async def test_a_child_after_its_root_updates_the_figures(live: LiveServer) -> None:
    with recorder() as (tracer, memory):
        agent_run(tracer)
        spans = memory.get_finished_spans()
    root = root_of(spans)
    late = next(s for s in spans if s.name == "chat claude-haiku-4")
    exp = exporter(live.url, live.tokens.agent)
    first = [s for s in spans if s is not late]
    assert await _export(exp, first) is SpanExportResult.SUCCESS
    task = (await _task(live, task_id_of(root)))["task"]
    assert (task["input_tokens"], task["output_tokens"]) == (1200, 300)
    assert await _export(exp, [late]) is SpanExportResult.SUCCESS
    task = (await _task(live, task_id_of(root)))["task"]
    assert (task["input_tokens"], task["output_tokens"]) == (1700, 400)
    assert task["cost_usd"] == pytest.approx(EXPECTED_COST, abs=1e-9)
    assert task["status"] == "completed"


async def test_the_documented_environment_variables_configure_a_stock_exporter(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", live.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer {live.tokens.agent}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with recorder(service="env-configured") as (tracer, memory):
        agent_run(tracer, agent="Env Agent!", content=False)
        spans = memory.get_finished_spans()
    assert await _export(OTLPSpanExporter(), spans) is SpanExportResult.SUCCESS
    task = (await _task(live, task_id_of(root_of(spans))))["task"]
    assert task["agent_type"] == "env-agent"
    assert task["output_seq"] == 1  # only the tool's event: no content was captured
    assert task["input_message"] == "invoke_agent Env Agent!"


async def test_a_user_token_is_refused_and_nothing_is_stored(live: LiveServer) -> None:
    with recorder() as (tracer, memory):
        agent_run(tracer)
        spans = memory.get_finished_spans()
    result = await _export(exporter(live.url, live.tokens.user), spans)
    assert result is SpanExportResult.FAILURE
    r = await live.http.get(
        f"/api/tasks/{task_id_of(root_of(spans))}", headers=live.headers("user")
    )
    assert r.status_code == 404
