"""Abuse: body limits on every operation, rate and connection limits, token storage and
comparison, CORS, security headers everywhere, injection and traversal probes."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import websockets
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from websockets.exceptions import ConnectionClosed

from dashboard_api import auth as auth_module
from dashboard_api.app import create_app
from tests.support.env import Backend
from tests.support.tokens import Tokens, make_token

Headers = Callable[[str], dict[str, str]]
METHODS = ("get", "post", "put", "patch", "delete")


def operations(app: FastAPI) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(method, path with every path parameter filled, operation) for every operation."""
    for path, item in app.openapi()["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, re.sub(r"\{([^}]+)\}", _fill, path), item[method]


def _fill(match: re.Match[str]) -> str:
    # Known values where a path parameter is an enumeration, so the handler is reached.
    return {"source": "github", "platform": "github"}.get(match.group(1), "probe-1")


def _is_problem(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]


# --- body limits ---------------------------------------------------------------------------


@pytest.fixture
async def small_body_app(backend: Backend) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(backend.settings(max_body_bytes=2048))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield app, c


async def test_every_operation_refuses_a_body_over_the_limit(
    small_body_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = small_body_app
    token = await make_token(app, role="admin", user_id="root")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    big = b'{"content": "' + b"x" * 4096 + b'"}'
    tried = 0
    for method, path, operation in operations(app):
        # Declared length over the limit: refused before a byte is read, on any operation.
        r = await client.request(method.upper(), path, content=big, headers=headers)
        _is_problem(r, 413)
        if "requestBody" not in operation:
            continue

        # Chunked (no Content-Length): refused once the bytes read pass the limit.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b" " * 1024

        r = await client.request(method.upper(), path, content=chunks(), headers=headers)
        assert "content-length" not in r.request.headers
        _is_problem(r, 413)
        tried += 1
    assert tried >= 5


# --- rate limits ---------------------------------------------------------------------------


async def test_rate_limit_covers_producers_and_websocket_handshakes(backend: Backend) -> None:
    app = create_app(backend.settings(rate_limit_per_minute=2))
    async with LifespanManager(app):
        limiter = app.state.ctx.limiter
        limiter.clock = lambda: 6_000_030.0
        agent = {"Authorization": f"Bearer {await make_token(app, role='agent', user_id='a')}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            body = {"task_id": "rl-1", "agent_type": "c", "input_message": "x"}
            assert (await c.post("/api/tasks", json=body, headers=agent)).status_code == 201
            r = await c.post("/api/tasks/rl-1/output", json={"content": "x"}, headers=agent)
            assert r.status_code == 200
            r = await c.post("/api/tasks/rl-1/output", json={"content": "y"}, headers=agent)
            _is_problem(r, 429)
            assert int(r.headers["retry-after"]) >= 1
            # The refused append wrote nothing.
            log = await c.get(
                "/api/tasks/rl-1/logs/full",
                headers={
                    "Authorization": f"Bearer {await make_token(app, role='user', user_id='u')}"
                },
            )
            assert log.json()["output"] == "x"


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # the shared count needs Redis
async def test_redis_rate_limit_is_shared_by_replicas(backend: Backend) -> None:
    assert backend.redis_url is not None
    apps = [create_app(backend.settings(rate_limit_per_minute=3)) for _ in range(2)]
    async with LifespanManager(apps[0]), LifespanManager(apps[1]):
        for app in apps:
            app.state.ctx.limiter.clock = lambda: 6_000_030.0
        token = await make_token(apps[0], role="user", user_id="alice")
        headers = {"Authorization": f"Bearer {token}"}
        statuses = []
        for i in range(5):
            transport = httpx.ASGITransport(app=apps[i % 2])
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                statuses.append((await c.get("/api/tasks", headers=headers)).status_code)
        assert statuses == [200, 200, 200, 429, 429]


# --- WebSocket connections per token -------------------------------------------------------


async def test_websocket_connections_per_token_are_limited(backend: Backend) -> None:
    from tests.support.servers import serve_app

    settings = backend.settings(ws_max_connections_per_token=2)
    async with serve_app(settings) as (app, port):
        first = await make_token(app, role="user", user_id="alice")
        second = await make_token(app, role="user", user_id="bob")
        url = f"ws://127.0.0.1:{port}/ws?token="
        a = await websockets.connect(url + first)
        b = await websockets.connect(url + first)
        try:
            for ws in (a, b):
                await ws.send('{"type":"ping"}')
                assert "pong" in await ws.recv()
            third = await websockets.connect(url + first)
            with pytest.raises(ConnectionClosed) as closed:
                await third.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4429
            # Another token has its own allowance.
            async with websockets.connect(url + second) as other:
                await other.send('{"type":"ping"}')
                assert "pong" in await other.recv()
            # A closed socket frees its place.
            await a.close()
            for _ in range(100):
                if len(app.state.ctx.hub.connections) <= 1:
                    break
                await asyncio.sleep(0.02)
            async with websockets.connect(url + first) as again:
                await again.send('{"type":"ping"}')
                assert "pong" in await again.recv()
        finally:
            await a.close()
            await b.close()


# --- tokens --------------------------------------------------------------------------------


async def test_tokens_are_stored_hashed_and_compared_in_constant_time(
    app: FastAPI,
    client: httpx.AsyncClient,
    tokens: Tokens,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with app.state.ctx.db.read() as session:
        rows = (await session.execute(text("SELECT * FROM api_tokens"))).all()
    dump = repr(rows)
    for clear in (tokens.admin, tokens.user, tokens.agent, tokens.other_user):
        assert clear not in dump
        assert clear[len("dash_") :] not in dump
        assert auth_module.hash_token(clear) in dump
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module auth compares tokens with
    app.state.ctx.tokens.clear()
    r = await client.get("/api/tasks", headers=tokens.headers("user"))
    assert r.status_code == 200
    assert calls, "the token digest was not compared with hmac.compare_digest"


# --- CORS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("origins", [[], ["https://ok.example"]])
async def test_cors_follows_the_settings_only(backend: Backend, origins: list[str]) -> None:
    app = create_app(backend.settings(cors_origins=origins))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for origin in ("https://ok.example", "https://evil.example", "null"):
                pre = await c.options(
                    "/api/tasks",
                    headers={
                        "Origin": origin,
                        "Access-Control-Request-Method": "GET",
                        "Access-Control-Request-Headers": "authorization",
                    },
                )
                simple = await c.get("/api/health", headers={"Origin": origin})
                allowed = origin in origins
                for r in (pre, simple):
                    got = r.headers.get("access-control-allow-origin")
                    assert got == (origin if allowed else None), (origin, r.status_code, got)
                    assert r.headers.get("access-control-allow-credentials") is None
                if allowed:
                    assert pre.status_code == 200


# --- security headers ----------------------------------------------------------------------


async def test_security_headers_on_every_operation_and_error(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    seen = 0
    requests: list[tuple[str, str, dict[str, str]]] = [
        (method, path, auth(role))
        for method, path, _ in operations(app)
        for role in ("user", "agent")
    ]
    requests += [
        ("get", "/api/nope", {}),  # 404
        ("get", "/nope", {}),  # the web dashboard's page (its own CSP, also default-src 'none')
        ("delete", "/api/health", {}),  # 405
        ("post", "/api/tasks", {**auth("agent"), "Content-Type": "application/json"}),  # 422
    ]
    for method, path, headers in requests:
        r = await client.request(method.upper(), path, headers=headers, timeout=10)
        assert r.headers.get("x-content-type-options") == "nosniff", (method, path)
        assert r.headers.get("x-frame-options") == "DENY", (method, path)
        assert r.headers.get("referrer-policy") == "no-referrer", (method, path)
        if not path.startswith(("/docs", "/redoc", "/openapi.json")):
            assert r.headers.get("cache-control") == "no-store", (method, path)
            assert "default-src 'none'" in r.headers.get("content-security-policy", "")
        seen += 1
    assert seen >= 20


# --- injection and traversal probes --------------------------------------------------------

PROBES = [
    "' OR '1'='1",
    "1; DROP TABLE tasks; --",
    "' UNION SELECT token_hash, 1 FROM api_tokens --",
    '" OR ""="',
    "%",
    "_",
    "%%",
    "\\",
    "\\%",
    "../../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "..\\..\\windows\\win.ini",
    "%00",
    "a\x00b",
    "$(id)",
    "{{7*7}}",
    "🙂" * 50,
    "x" * 5000,
]


async def test_probes_in_queries_ids_and_cursors_answer_4xx_or_nothing(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    agent, admin = auth("agent"), auth("admin")
    r = await client.post(
        "/api/tasks",
        json={"task_id": "innocent", "agent_type": "c", "input_message": "hello world"},
        headers=agent,
    )
    assert r.status_code == 201
    list_ops = [
        path
        for path, item in app.openapi()["paths"].items()
        if "get" in item and "{" not in path
        for p in item["get"].get("parameters", [])
        if p["name"] == "q"
    ]
    assert "/api/tasks" in list_ops
    cursor_ops = [
        path
        for path, item in app.openapi()["paths"].items()
        if "get" in item and "{" not in path
        for p in item["get"].get("parameters", [])
        if p["name"] == "cursor"
    ]
    id_ops = [
        (method, path)
        for path, item in app.openapi()["paths"].items()
        if "{" in path
        for method in METHODS
        if method in item
    ]
    for probe in PROBES:
        for path in list_ops:
            r = await client.get(path, params={"q": probe}, headers=admin)
            assert r.status_code in (200, 422), (path, probe, r.status_code, r.text[:200])
            if r.status_code == 200:
                assert _holds_no_rows(r), (path, probe, r.text[:200])
        for path in cursor_ops:
            r = await client.get(path, params={"cursor": probe}, headers=admin)
            assert r.status_code == 422, (path, probe, r.status_code, r.text[:200])
        for method, path in id_ops:
            filled = _fill_all(path, _quote(probe))
            r = await client.request(method.upper(), filled, headers=admin, timeout=10)
            assert 400 <= r.status_code < 500, (method, filled[:120], r.status_code, r.text[:200])
    # Nothing was dropped or changed.
    r = await client.get("/api/tasks", headers=admin)
    assert [t["task_id"] for t in r.json()["items"]] == ["innocent"]
    r = await client.get("/api/tasks", params={"q": "hello"}, headers=admin)
    assert r.json()["total"] == 1


def _holds_no_rows(r: httpx.Response) -> bool:
    """Whether a 200 answer of a list operation lists nothing: a JSON list envelope, or an
    export (CSV with its header row alone, JSON Lines with no line)."""
    content_type = r.headers["content-type"]
    if content_type.startswith("application/json"):
        return bool(r.json()["items"] == [])
    if content_type.startswith("text/csv"):
        return len(r.text.splitlines()) == 1
    return r.text.strip() == ""


def _fill_all(path: str, value: str) -> str:
    for name in re.findall(r"\{[^}]+\}", path):
        path = path.replace(name, value)
    return path


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


# --- extreme timestamps (found by `make fuzz`: a 500 in the analytics default window) --------

EXTREMES = ("0001-01-01T00:00:00Z", "0001-01-02T00:00:00Z", "9999-12-31T23:59:59.999Z")


async def test_extreme_time_windows_answer_4xx_or_200(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    ranged = [
        (path, {p["name"] for p in item["get"].get("parameters", [])})
        for path, item in app.openapi()["paths"].items()
        if "get" in item and "{" not in path
    ]
    tried = 0
    for path, names in ranged:
        for name in names & {"from", "to", "created_after", "created_before"}:
            for value in EXTREMES:
                r = await client.get(path, params={name: value}, headers=auth("admin"))
                assert r.status_code in (200, 422), (path, name, value, r.status_code, r.text[:200])
                tried += 1
    assert tried >= 6
