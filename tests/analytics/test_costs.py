"""Computed cost: cache tokens priced, default price for unknown models, recomputed on
token or model changes, never over a reported cost; sums are exact to the micro-dollar."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from dashboard_api.app import create_app
from tests.support.env import Backend
from tests.support.tokens import make_token

Headers = Callable[[str], dict[str, str]]
MILLION = 1_000_000
TOKENS = {
    "input_tokens": MILLION,
    "output_tokens": MILLION,
    "cache_read_tokens": MILLION,
    "cache_write_tokens": MILLION,
}


async def new_task(client: httpx.AsyncClient, auth: Headers, task_id: str, **extra: Any) -> None:
    body = {"task_id": task_id, "agent_type": "coder", "input_message": "x", **extra}
    r = await client.post("/api/tasks", json=body, headers=auth("agent"))
    assert r.status_code == 201, r.text


async def patch(
    client: httpx.AsyncClient, auth: Headers, task_id: str, **body: Any
) -> dict[str, Any]:
    r = await client.patch(f"/api/tasks/{task_id}", json=body, headers=auth("agent"))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def total_cost(client: httpx.AsyncClient, auth: Headers) -> float:
    params = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
    r = await client.get("/api/analytics/summary", params=params, headers=auth("user"))
    return float(r.json()["total_cost_usd"])


async def test_computed_cost_lifecycle(client: httpx.AsyncClient, auth: Headers) -> None:
    # claude-sonnet-4: 3 / 15 / 0.3 / 3.75 USD per million input / output / cache r / w.
    await new_task(client, auth, "c-1", model="claude-sonnet-4")
    task = await patch(client, auth, "c-1", **TOKENS)
    assert task["cost_basis"] == "computed"
    assert task["cost_usd"] == 22.05
    assert await total_cost(client, auth) == 22.05
    # The model changes: recomputed (claude-opus-4: 15 / 75 / 1.5 / 18.75).
    task = await patch(client, auth, "c-1", model="claude-opus-4")
    assert task["cost_usd"] == 110.25
    # Tokens change: recomputed.
    task = await patch(client, auth, "c-1", cache_read_tokens=0, cache_write_tokens=0)
    assert task["cost_usd"] == 90.0
    assert await total_cost(client, auth) == 90.0
    # A reported cost wins, and stays when tokens or the model change later.
    task = await patch(client, auth, "c-1", cost_usd=0.5)
    assert (task["cost_usd"], task["cost_basis"]) == (0.5, "reported")
    task = await patch(client, auth, "c-1", input_tokens=5 * MILLION, model="gpt-5")
    assert (task["cost_usd"], task["cost_basis"]) == (0.5, "reported")
    assert await total_cost(client, auth) == 0.5


async def test_unknown_model_uses_the_default_price(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    await new_task(client, auth, "u-1", model="some-future-model")
    task = await patch(client, auth, "u-1", **TOKENS)
    assert task["cost_usd"] == 22.05  # the default price equals sonnet's
    await new_task(client, auth, "u-2")  # no model at all
    task = await patch(client, auth, "u-2", output_tokens=1)
    assert task["cost_usd"] == 0.000015


async def test_reported_costs_sum_exactly(client: httpx.AsyncClient, auth: Headers) -> None:
    await new_task(client, auth, "m-1")
    await new_task(client, auth, "m-2")
    await patch(client, auth, "m-1", cost_usd=0.1)
    await patch(client, auth, "m-2", cost_usd=0.2)
    assert await total_cost(client, auth) == 0.3  # not 0.30000000000000004
    params = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
    perf = (
        await client.get("/api/analytics/performance", params=params, headers=auth("user"))
    ).json()
    assert perf["overall"]["total_cost_usd"] == 0.3
    assert perf["overall"]["avg_cost_usd"] == 0.15
    hist = (
        await client.get(
            "/api/analytics/costs/histogram",
            params={"from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"},
            headers=auth("user"),
        )
    ).json()
    assert sum(b["cost_usd"] for b in hist["buckets"]) == pytest.approx(0.3)
    assert [b["cost_usd"] for b in hist["buckets"] if b["tasks"]] == [0.3]


@pytest.fixture
async def priced_client(
    backend: Backend, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    prices = {
        "models": {
            "house-model": {"input": "2", "output": "4", "cache_read": "0.5", "cache_write": "1"}
        },
        "default": {"input": "1", "output": "1", "cache_read": "1", "cache_write": "1"},
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(prices))
    app = create_app(backend.settings(prices_file=path))
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app


async def test_prices_file(priced_client: tuple[httpx.AsyncClient, Any]) -> None:
    client, app = priced_client
    agent = {"Authorization": f"Bearer {await make_token(app, role='agent', user_id='a')}"}

    def auth(_: str) -> dict[str, str]:
        return agent

    await new_task(client, auth, "p-1", model="house-model")
    assert (await patch(client, auth, "p-1", **TOKENS))["cost_usd"] == 7.5
    await new_task(client, auth, "p-2", model="claude-sonnet-4")  # not in the file: default
    assert (await patch(client, auth, "p-2", **TOKENS))["cost_usd"] == 4.0
