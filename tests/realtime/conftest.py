"""Real servers for the realtime tests: uvicorn on a loopback port, in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
import websockets
from fastapi import FastAPI

from dashboard_api.aiotasks import stop_tasks
from dashboard_api.app import create_app
from dashboard_api.realtime import uvicorn_ws_options
from dashboard_api.settings import Settings
from tests.conftest import Backend, Tokens, make_token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """An app served by uvicorn on 127.0.0.1, with tokens of every role."""

    app: FastAPI
    port: int
    tokens: Tokens
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, token: str | None = None) -> str:
        base = f"ws://127.0.0.1:{self.port}/ws"
        return base if token is None else f"{base}?token={token}"

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def headers(self, role: str) -> dict[str, str]:
        return self.tokens.headers(role)

    async def create_task(self, task_id: str, status: str = "running") -> dict[str, Any]:
        r = await self.http.post(
            "/api/tasks",
            json={
                "task_id": task_id,
                "agent_type": "coder",
                "input_message": "x",
                "status": status,
            },
            headers=self.headers("agent"),
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def append(self, task_id: str, *contents: str) -> dict[str, Any]:
        body: dict[str, Any]
        if len(contents) == 1:
            body = {"content": contents[0]}
        else:
            body = {"chunks": [{"content": c} for c in contents]}
        r = await self.http.post(
            f"/api/tasks/{task_id}/output", json=body, headers=self.headers("agent")
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def finish(self, task_id: str, status: str = "completed") -> None:
        r = await self.http.patch(
            f"/api/tasks/{task_id}", json={"status": status}, headers=self.headers("agent")
        )
        assert r.status_code == 200, r.text

    async def connect(self, role: str = "user", **kwargs: Any) -> Any:
        token = getattr(self.tokens, role)
        return await websockets.connect(self.ws_url(token), max_size=None, **kwargs)


@contextlib.asynccontextmanager
async def serve_app(
    settings: Settings, **uvicorn_options: Any
) -> AsyncIterator[tuple[FastAPI, int]]:
    """Run `create_app(settings)` under uvicorn (lifespan included) until the block ends."""
    app = create_app(settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
        **{**uvicorn_ws_options(settings), **uvicorn_options},
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(600):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        assert server.started, "uvicorn did not start"
        yield app, port
    finally:
        server.should_exit = True
        await asyncio.wait({task}, timeout=15)
        # uvicorn cancels the connections still open after its graceful timeout but does
        # not wait for them, nor does a stuck serve() end by itself: end both here, so that
        # no request outlives the app (whose database is disposed by then) and the test's
        # event loop is not left with them to cancel at close.
        await stop_tasks([task, *server.server_state.tasks], what="test uvicorn server")
        sock.close()


ServeFactory = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def serve(backend: Backend) -> AsyncIterator[ServeFactory]:
    """`await serve(**settings_overrides)` starts a live server on the test's backend.

    `uvicorn_options={...}` overrides uvicorn's configuration (e.g. its WebSocket protocol).
    """
    stack = contextlib.AsyncExitStack()

    async def start(uvicorn_options: dict[str, Any] | None = None, **overrides: Any) -> LiveServer:
        settings = backend.settings(**overrides)
        app, port = await stack.enter_async_context(serve_app(settings, **(uvicorn_options or {})))
        tokens = Tokens(
            admin=await make_token(app, role="admin", user_id="root"),
            user=await make_token(app, role="user", user_id="alice"),
            other_user=await make_token(app, role="user", user_id="bob"),
            agent=await make_token(app, role="agent", user_id="agent-1"),
        )
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        )
        return LiveServer(app, port, tokens, http)

    async with stack:
        yield start


@pytest.fixture
async def live(serve: ServeFactory) -> LiveServer:
    return await serve()


async def recv_json(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    value = orjson.loads(raw)
    assert isinstance(value, dict)
    return value


async def send_json(ws: Any, value: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(value).decode())


async def recv_until(
    ws: Any, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> list[dict[str, Any]]:
    """Every message up to and including the first that satisfies `predicate`."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            msg = await recv_json(ws, timeout)
            seen.append(msg)
            if predicate(msg):
                return seen
