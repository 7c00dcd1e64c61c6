"""POST /v1/traces on the wire: OTLP/JSON, gzip, partial success, and every malformed or
refused request a clear 4xx in the request's encoding (fuzzed: never a 5xx)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from google.rpc.status_pb2 import Status
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from dashboard_api.app import create_app
from tests.otlp.helpers import (
    PROTOBUF,
    agent_run,
    json_body,
    protobuf_body,
    recorder,
    root_of,
    task_id_of,
)
from tests.support.tokens import make_token

JSON = "application/json"
Auth = Callable[[str], dict[str, str]]


def _headers(auth: Auth, content_type: str, role: str = "agent", **extra: str) -> dict[str, str]:
    return {**auth(role), "Content-Type": content_type, **extra}


def _trace_doc(trace_id: str = "5b8efff798038103d269b633813fc60c") -> dict[str, Any]:
    """An OTLP/JSON request written as the specification's examples are: hex ids,
    lowerCamelCase keys, 64-bit integers as strings, enums as integers."""
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "json-bot"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "handmade"},
                        "spans": [
                            {
                                "traceId": trace_id.upper(),  # hex is case-insensitive
                                "spanId": "eee19b7ec3c1b174",
                                "name": "invoke_agent planner",
                                "kind": 1,
                                "startTimeUnixNano": "1765000000000000000",
                                "endTimeUnixNano": "1765000002500000000",
                                "attributes": [
                                    {
                                        "key": "gen_ai.agent.name",
                                        "value": {"stringValue": "planner"},
                                    }
                                ],
                                "status": {"code": 1},
                            },
                            {
                                "traceId": trace_id,
                                "spanId": "eee19b7ec3c1b175",
                                "parentSpanId": "eee19b7ec3c1b174",
                                "name": "chat gpt-5",
                                "kind": 3,
                                "startTimeUnixNano": "1765000000100000000",
                                "endTimeUnixNano": "1765000002000000000",
                                "attributes": [
                                    {
                                        "key": "gen_ai.operation.name",
                                        "value": {"stringValue": "chat"},
                                    },
                                    {
                                        "key": "gen_ai.request.model",
                                        "value": {"stringValue": "gpt-5"},
                                    },
                                    {
                                        "key": "gen_ai.usage.input_tokens",
                                        "value": {"intValue": "4000"},
                                    },
                                    {
                                        "key": "gen_ai.usage.output_tokens",
                                        "value": {"intValue": 1000},
                                    },
                                    {"key": "gen_ai.usage.cost", "value": {"doubleValue": 0.25}},
                                    {
                                        "key": "gen_ai.input.messages",
                                        "value": {
                                            "stringValue": '[{"role": "user", "parts": '
                                            '[{"type": "text", "content": "Plan the release"}]}]'
                                        },
                                    },
                                ],
                            },
                        ],
                    }
                ],
            }
        ]
    }


async def test_otlp_json_with_reported_cost(client: Any, auth: Auth) -> None:
    r = await client.post(
        "/v1/traces", content=orjson.dumps(_trace_doc()), headers=_headers(auth, JSON)
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == JSON
    assert r.json() == {}
    task_id = "otel-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"
    task = (await client.get(f"/api/tasks/{task_id}", headers=auth("user"))).json()
    assert task["agent_type"] == "planner"
    assert task["model"] == "gpt-5"
    assert (task["input_tokens"], task["output_tokens"]) == (4000, 1000)
    assert (task["cost_usd"], task["cost_basis"]) == (0.25, "reported")
    assert task["duration_seconds"] == 2.5
    assert task["created_at"] == "2025-12-06T05:46:40.000Z"
    assert task["input_message"] == "Plan the release"
    # The analytics rollups count it like any task.
    r = await client.get(
        "/api/analytics/summary",
        params={
            "from": "2025-12-06T00:00:00Z",
            "to": "2025-12-07T00:00:00Z",
            "source": "opentelemetry",
        },
        headers=auth("user"),
    )
    summary = r.json()
    assert (summary["total_tasks"], summary["completed_tasks"]) == (1, 1)
    assert (summary["input_tokens"], summary["output_tokens"]) == (4000, 1000)
    assert summary["total_cost_usd"] == 0.25
    assert summary["avg_duration_seconds"] == 2.5


async def test_sdk_spans_as_gzipped_json_and_protobuf_give_one_task(
    client: Any, auth: Auth
) -> None:
    with recorder() as (tracer, memory):
        agent_run(tracer)
        spans = memory.get_finished_spans()
    r = await client.post(
        "/v1/traces",
        content=gzip.compress(json_body(spans)),
        headers=_headers(auth, JSON, **{"Content-Encoding": "gzip"}),
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/traces",
        content=zlib.compress(protobuf_body(spans)),
        headers=_headers(auth, PROTOBUF, **{"Content-Encoding": "deflate"}),
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/traces", content=protobuf_body(spans), headers=_headers(auth, PROTOBUF)
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == PROTOBUF
    assert ExportTraceServiceResponse.FromString(r.content) == ExportTraceServiceResponse()
    task = (
        await client.get(f"/api/tasks/{task_id_of(root_of(spans))}", headers=auth("user"))
    ).json()
    assert (task["input_tokens"], task["output_tokens"], task["output_seq"]) == (1700, 400, 4)
    listed = await client.get(
        "/api/tasks", params={"source": "opentelemetry"}, headers=auth("user")
    )
    assert listed.json()["total"] == 1


async def test_unusable_spans_are_rejected_by_name_and_the_rest_kept(
    client: Any, auth: Auth
) -> None:
    doc = _trace_doc()
    spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append({**spans[1], "spanId": "00000000000000aa", "traceId": "abcd"})  # short trace id
    spans.append({**spans[1], "spanId": "0000000000000000"})  # all-zero span id
    spans.append({**spans[1], "spanId": "00000000000000bb", "endTimeUnixNano": "1"})
    r = await client.post("/v1/traces", content=orjson.dumps(doc), headers=_headers(auth, JSON))
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "3"  # int64: a string in proto JSON
    assert "invalid trace_id" in partial["errorMessage"]
    assert "invalid span_id" in partial["errorMessage"]
    assert "end before start" in partial["errorMessage"]
    task_id = "otel-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"
    assert (await client.get(f"/api/tasks/{task_id}", headers=auth("user"))).status_code == 200


async def test_refusals_are_clear_4xx_in_the_request_encoding(client: Any, auth: Auth) -> None:
    # Bad protobuf: a google.rpc.Status in protobuf, as OTLP/HTTP asks.
    r = await client.post("/v1/traces", content=b"\x0a\xff\xff", headers=_headers(auth, PROTOBUF))
    assert r.status_code == 400
    assert r.headers["content-type"] == PROTOBUF
    assert "not a protobuf ExportTraceServiceRequest" in Status.FromString(r.content).message
    # Bad JSON, bad hex ids: a problem document that reads as a Status too.
    for body in (b"{", b"[1]", orjson.dumps(_trace_doc(trace_id="zz" * 16))):
        r = await client.post("/v1/traces", content=body, headers=_headers(auth, JSON))
        assert r.status_code == 400, body
        assert r.headers["content-type"] == "application/problem+json"
        doc = r.json()
        assert (doc["status"], doc["code"], doc["message"]) == (400, 3, doc["detail"])
    # Not an OTLP content type or encoding.
    r = await client.post("/v1/traces", content=b"x", headers=_headers(auth, "text/plain"))
    assert r.status_code == 415
    r = await client.post(
        "/v1/traces", content=b"x", headers=_headers(auth, JSON, **{"Content-Encoding": "br"})
    )
    assert r.status_code == 415
    # Broken gzip.
    r = await client.post(
        "/v1/traces",
        content=gzip.compress(b"{}")[:-6],
        headers=_headers(auth, JSON, **{"Content-Encoding": "gzip"}),
    )
    assert r.status_code == 400
    # No token, or a role that may not produce.
    r = await client.post("/v1/traces", content=b"", headers={"Content-Type": PROTOBUF})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert Status.FromString(r.content).code == 16
    r = await client.post("/v1/traces", content=b"", headers=_headers(auth, PROTOBUF, "user"))
    assert r.status_code == 403
    # An empty request is a success (OTLP/HTTP).
    r = await client.post("/v1/traces", content=b"", headers=_headers(auth, PROTOBUF))
    assert r.status_code == 200


@pytest.mark.parametrize(
    "overrides", [{"otlp_max_body_bytes": 2048}, {"otlp_max_spans_per_request": 2}]
)
async def test_limits_answer_413(backend: Any, overrides: dict[str, Any]) -> None:
    app = create_app(backend.settings(**overrides))
    async with LifespanManager(app):
        token = await make_token(app, role="agent", user_id="agent-1")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": JSON}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            doc = _trace_doc()
            spans = doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
            spans[1]["attributes"].append(
                {"key": "gen_ai.prompt", "value": {"stringValue": "x" * 3000}}
            )
            spans.append({**spans[1], "spanId": "eee19b7ec3c1b176"})  # 3 spans
            r = await client.post("/v1/traces", content=orjson.dumps(doc), headers=headers)
            assert r.status_code == 413, r.text
            # A gzip bomb is refused by its decompressed size.
            if "otlp_max_body_bytes" in overrides:
                bomb = gzip.compress(b" " * 100_000)
                assert len(bomb) < 2048
                r = await client.post(
                    "/v1/traces", content=bomb, headers={**headers, "Content-Encoding": "gzip"}
                )
                assert r.status_code == 413


async def test_attribute_values_are_cut_to_the_cap(backend: Any) -> None:
    app = create_app(backend.settings(otlp_max_attribute_chars=100))
    async with LifespanManager(app):
        token = await make_token(app, role="agent", user_id="agent-1")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": JSON}
        doc = _trace_doc()
        chat = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
        chat["attributes"].append(
            {"key": "gen_ai.completion", "value": {"stringValue": "y" * 5000}}
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/v1/traces", content=orjson.dumps(doc), headers=headers)
            assert r.status_code == 200
            task_id = "otel-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"
            task = (await client.get(f"/api/tasks/{task_id}", headers=headers)).json()
    assert task["result"] == "y" * 100


# --- fuzz ----------------------------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["", "00", "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "zz"]),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "resourceSpans",
                    "scopeSpans",
                    "spans",
                    "traceId",
                    "spanId",
                    "parentSpanId",
                    "name",
                    "startTimeUnixNano",
                    "endTimeUnixNano",
                    "attributes",
                    "key",
                    "value",
                    "stringValue",
                    "intValue",
                    "kvlistValue",
                    "arrayValue",
                    "values",
                    "events",
                    "links",
                    "status",
                    "code",
                    "flags",
                    "resource",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=30,
)


@given(
    body=st.one_of(st.binary(max_size=300), _json.map(lambda doc: json.dumps(doc).encode())),
    content_type=st.sampled_from([PROTOBUF, JSON, f"{JSON}; charset=utf-8", "text/plain"]),
    gzipped=st.booleans(),
)
async def test_fuzzed_bodies_never_give_a_5xx(
    client: Any, auth: Auth, body: bytes, content_type: str, gzipped: bool
) -> None:
    headers = _headers(auth, content_type)
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    r = await client.post("/v1/traces", content=body, headers=headers)
    assert r.status_code in (200, 400, 413, 415), r.text
    if r.status_code != 200 and content_type == PROTOBUF:
        assert Status.FromString(r.content).message
