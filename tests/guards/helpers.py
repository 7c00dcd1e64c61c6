"""Shared steps of the budgets and alerts tests."""

from __future__ import annotations

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
