"""Fixtures of the agents/status/metrics tests: an app on a controllable clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from dashboard_api.app import create_app
from dashboard_api.realtime.sinks import QueueSink
from dashboard_api.realtime.subscriptions import Subscription
from tests.conftest import Backend, Tokens, make_token


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clocked(
    backend: Backend, clock: FakeClock
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Tokens]]:
    """An app on the fake clock (sweeper off: tests sweep by hand), a client and tokens."""
    app = create_app(backend.settings(agent_sweep_interval_seconds=0), clock=clock)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        tokens = Tokens(
            admin=await make_token(app, role="admin", user_id="root"),
            user=await make_token(app, role="user", user_id="alice"),
            other_user=await make_token(app, role="user", user_id="bob"),
            agent=await make_token(app, role="agent", user_id="agent-1"),
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client, tokens


class ChannelListener:
    """Events of one channel as this replica's hub delivers them (through the broker)."""

    def __init__(self, app: FastAPI, channel: str) -> None:
        self.hub = app.state.ctx.hub
        self.sink = QueueSink(10_000)
        self.sub = Subscription(self.hub, self.sink, channel)

    async def __aenter__(self) -> ChannelListener:
        await self.hub.attach(self.sub)
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.sub.close()

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            event = await self.sink.get()
        assert event is not None
        return dict(event.payload)

    async def drain(self, settle: float = 0.3) -> list[dict[str, Any]]:
        """Everything that arrives until nothing has for `settle` seconds."""
        out: list[dict[str, Any]] = []
        while True:
            try:
                out.append(await self.next(timeout=settle))
            except TimeoutError:
                return out


Listen = Callable[[FastAPI, str], ChannelListener]
