"""Demo mode seeds a budget just under its warning threshold and rules that fire."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi import FastAPI

from dashboard_api.demo.data import seed_demo
from tests.guards.helpers import alerts_round, budgets_round, register, set_cost

Auth = Callable[[str], dict[str, str]]


async def test_demo_budget_and_rules(app: FastAPI, client: httpx.AsyncClient, auth: Auth) -> None:
    ctx = app.state.ctx
    ctx.settings = ctx.settings.model_copy(update={"demo_tasks": 300})
    await seed_demo(ctx)
    budgets = (await client.get("/api/budgets", headers=auth("user"))).json()["items"]
    (fleet,) = budgets
    assert fleet["state"] == "ok"
    assert fleet["spent_usd"] < 0.8 * fleet["limit_usd"]
    rules = (await client.get("/api/alerts/rules", headers=auth("user"))).json()["items"]
    assert {r["kind"] for r in rules} == {"failure_rate", "budget"}
    # A little more spending (as the simulated agents do) crosses the warning threshold,
    # and the budget rule fires.
    await register(client, auth("agent"), "more")
    needed = 0.8 * fleet["limit_usd"] - fleet["spent_usd"] + 0.01
    await set_cost(client, auth("agent"), "more", round(needed, 6))
    await budgets_round(app)
    budgets = (await client.get("/api/budgets", headers=auth("user"))).json()["items"]
    assert budgets[0]["state"] == "warning"
    await alerts_round(app)
    firing = (await client.get("/api/alerts?state=firing", headers=auth("user"))).json()
    assert "budget-warning" in {a["rule_id"] for a in firing["items"]}
