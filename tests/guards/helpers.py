"""Shared steps of the budgets and alerts tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI

from dashboard_api.services.alerts.evaluate import evaluate_rules
from dashboard_api.services.alerts.outbox import run_sender_once
from dashboard_api.services.budgets.jobs import run_budgets_once


async def register(
    client: httpx.AsyncClient, headers: dict[str, str], task_id: str, **fields: Any
) -> dict[str, Any]:
    body = {"task_id": task_id, "agent_type": "coder", "input_message": "x", **fields}
    r = await client.post("/api/tasks", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def set_cost(
    client: httpx.AsyncClient, headers: dict[str, str], task_id: str, cost: float
) -> None:
    r = await client.patch(f"/api/tasks/{task_id}", json={"cost_usd": cost}, headers=headers)
    assert r.status_code == 200, r.text


async def put_budget(
    client: httpx.AsyncClient, headers: dict[str, str], budget_id: str, **fields: Any
) -> dict[str, Any]:
    body = {"name": budget_id, "period": "day", "limit_usd": 10, **fields}
    r = await client.put(f"/api/budgets/{budget_id}", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def budgets_by_id(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    r = await client.get("/api/budgets", headers=headers)
    assert r.status_code == 200, r.text
    return {b["budget_id"]: b for b in r.json()["items"]}


async def budgets_round(app: FastAPI) -> Any:
    ctx = app.state.ctx
    return await run_budgets_once(ctx.db, ctx.settings, ctx.clock)


async def alerts_round(app: FastAPI) -> list[dict[str, Any]]:
    ctx = app.state.ctx
    return await evaluate_rules(ctx.db, ctx.settings, now=ctx.clock.now())


async def sender_round(app: FastAPI) -> int:
    ctx = app.state.ctx
    return await run_sender_once(ctx.db, ctx.settings, ctx.clock)


Auth = Callable[[str], dict[str, str]]


async def put_channel(
    client: httpx.AsyncClient, auth: Auth, channel_id: str, **body: Any
) -> httpx.Response:
    return await client.put(f"/api/alerts/channels/{channel_id}", json=body, headers=auth("admin"))


async def put_rule(
    client: httpx.AsyncClient, auth: Auth, rule_id: str, **fields: Any
) -> dict[str, Any]:
    body = {"name": rule_id, "kind": "cost_usd", "threshold": 1, **fields}
    r = await client.put(f"/api/alerts/rules/{rule_id}", json=body, headers=auth("admin"))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def alerts(client: httpx.AsyncClient, auth: Auth, **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/api/alerts", params=params, headers=auth("user"))
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def attempts(client: httpx.AsyncClient, auth: Auth, alert_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/alerts/{alert_id}/deliveries", headers=auth("admin"))
    assert r.status_code == 200, r.text
    return list(r.json()["items"])
