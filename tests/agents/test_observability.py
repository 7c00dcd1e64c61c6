"""`/metrics` (parsed as Prometheus text), request ids and redacted structured logs."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from dashboard_api.app import create_app
from dashboard_api.observability.logging import redact_text, redact_value
from tests.support.env import Backend
from tests.support.tokens import make_token


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    matching = [
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return float(matching[0])


async def _app(
    backend: Backend, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(backend.settings(metrics_cache_seconds=0, **overrides))
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


@pytest.fixture
async def running(backend: Backend) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async for pair in _app(backend):
        yield pair


async def test_metrics_per_route_template(running: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, client = running
    agent = {"Authorization": f"Bearer {await make_token(app, role='agent', user_id='a')}"}
    user = {"Authorization": f"Bearer {await make_token(app, role='user', user_id='u')}"}
    for task_id in ("m-1", "m-2"):
        r = await client.post(
            "/api/tasks", json={"task_id": task_id, "agent_type": "coder", "input_message": "x"},
            headers=agent,
        )  # fmt: skip
        assert r.status_code == 201
    await client.patch("/api/tasks/m-2", json={"status": "running"}, headers=agent)
    for task_id in ("m-1", "m-2", "missing-1", "missing-2"):
        await client.get(f"/api/tasks/{task_id}", headers=user)
    await client.get("/api/no/such/path")  # outside /api the web dashboard answers every GET

    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    s = _samples(r.text)
    route = "/api/tasks/{task_id}"
    assert _value(s, "dashboard_http_requests_total", method="GET", route=route, status="200") == 2
    assert _value(s, "dashboard_http_requests_total", method="GET", route=route, status="404") == 2
    assert (
        _value(s, "dashboard_http_requests_total", method="POST", route="/api/tasks", status="201")
        == 2
    )
    assert (
        _value(s, "dashboard_http_requests_total", method="GET", route="<unmatched>", status="404")
        == 1
    )
    # Raw paths never become labels.
    assert not any("m-1" in str(x.labels) for x in s["dashboard_http_requests_total"])
    assert (
        _value(s, "dashboard_http_request_duration_seconds_count", method="GET", route=route) == 4
    )
    buckets = [
        x for x in s["dashboard_http_request_duration_seconds_bucket"] if x.labels["route"] == route
    ]
    assert any(b.labels["le"] == "+Inf" and b.value == 4 for b in buckets)
    assert _value(s, "dashboard_tasks", status="queued") == 1
    assert _value(s, "dashboard_tasks", status="running") == 1
    assert _value(s, "dashboard_tasks", status="completed") == 0
    for name in (
        "dashboard_ws_connections", "dashboard_ws_subscriptions", "dashboard_broker_up",
        "dashboard_events_received_total", "dashboard_events_delivered_total",
        "dashboard_events_dropped_total", "dashboard_ws_slow_consumer_disconnects_total",
        "dashboard_broker_reconnects_total", "dashboard_broker_publish_failures_total",
        "dashboard_events_delivered_shared_total", "dashboard_ws_group_leaves_total",
        "dashboard_ws_group_dissolves_total",
    ):  # fmt: skip
        assert name in s, name
    # Each task write publishes its status on `tasks` and `task:{id}`.
    assert _value(s, "dashboard_events_published_total") >= 6
    assert _value(s, "dashboard_broker_up") == 1


async def test_each_app_has_its_own_registry(backend: Backend) -> None:
    async for _, first in _app(backend):
        async for _, second in _app(backend):
            await first.get("/api/health")
            await first.get("/api/health")
            await second.get("/api/health")
            a = _samples((await first.get("/metrics")).text)
            b = _samples((await second.get("/metrics")).text)
            assert (
                _value(a, "dashboard_http_requests_total", route="/api/health", status="200") == 2
            )
            assert (
                _value(b, "dashboard_http_requests_total", route="/api/health", status="200") == 1
            )


async def test_metrics_token_setting(backend: Backend) -> None:
    async for app, client in _app(backend, metrics_require_token=True):
        r = await client.get("/metrics")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        token = await make_token(app, role="user", user_id="u")
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        assert "dashboard_http_requests_total" in r.text


async def test_request_id(running: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = running
    r = await client.get("/api/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = (await client.get("/api/health")).headers["x-request-id"]
    assert generated
    for bad in ("x" * 200, "has space", 'a"b', "<script>"):
        r = await client.get("/api/health", headers={"X-Request-ID": bad})
        assert r.headers["x-request-id"] != bad
        assert r.headers["x-request-id"]
    r = await client.get("/api/tasks")  # a problem answer carries it too
    assert r.status_code == 401
    assert r.headers["x-request-id"]


async def test_logs_are_json_with_request_id_and_no_secrets(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "dash_SuperSecretTokenValue123"
    async for app, client in _app(backend, log_json=True):
        token = await make_token(app, role="user", user_id="u")
        capsys.readouterr()
        r = await client.get(
            f"/api/tasks/t-9?token={secret}&x=1",
            headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-42"},
        )
        assert r.status_code == 404
        logging.getLogger("dashboard_api.test").warning(
            "client sent Authorization: Bearer %s and url /ws?token=%s", token, secret
        )
        err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    access = [x for x in lines if x.get("event") == "request"]
    assert len(access) == 1
    entry = access[0]
    assert entry["request_id"] == "req-42"
    assert entry["method"] == "GET"
    assert entry["route"] == "/api/tasks/{task_id}"
    assert entry["status"] == 404
    assert isinstance(entry["duration_ms"], float)
    assert "token=[REDACTED]" in entry["path"]
    assert any("Bearer [REDACTED]" in x["event"] for x in lines)
    assert secret not in err
    assert token not in err


def test_redaction_rules() -> None:
    assert redact_text("Authorization: Bearer abc.def") == "Authorization: Bearer [REDACTED]"
    assert redact_text("/ws?token=abc&channel=x") == "/ws?token=[REDACTED]&channel=x"
    assert redact_text("postgresql://u:pw@h/db") == "postgresql://u:[REDACTED]@h/db"
    assert "dash_abcdefghijk" not in redact_text("tok dash_abcdefghijk")
    assert redact_value("secret", "s3cr3t") == "[REDACTED]"
    assert redact_value("headers", {"Authorization": "x", "Accept": "y"}) == {
        "Authorization": "[REDACTED]", "Accept": "y",
    }  # fmt: skip
    assert redact_value("output_tokens", 123) == 123
