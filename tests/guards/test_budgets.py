"""Budgets (docs/api.md §14): exact spend from the rollups, states, events, holds at claim."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from tests.guards.helpers import (
    budgets_by_id,
    budgets_round,
    put_budget,
    register,
    set_cost,
)

Auth = Callable[[str], dict[str, str]]


async def test_roles_and_validation(client: httpx.AsyncClient, auth: Auth) -> None:
    body = {"name": "b", "period": "day", "limit_usd": 1}
    assert (await client.put("/api/budgets/b1", json=body, headers=auth("user"))).status_code == 403
    assert (await client.get("/api/budgets")).status_code == 401
    bad = [
        {**body, "tz": "Mars/Olympus"},
        {**body, "period": "year"},
        {**body, "limit_usd": -1},
        {**body, "warn_at": [1.5]},
        {**body, "action": "explode"},
        {**body, "scope": {"team": "x"}},
    ]
    for b in bad:
        r = await client.put("/api/budgets/b1", json=b, headers=auth("admin"))
        assert r.status_code == 422, (b, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert (
        await client.put("/api/budgets/b%20x", json=body, headers=auth("admin"))
    ).status_code == 422
    assert (await client.delete("/api/budgets/none", headers=auth("admin"))).status_code == 404
    created = await put_budget(client, auth("admin"), "b1", warn_at=[0.9, 0.5])
    assert created["warn_at"] == [0.5, 0.9]
    assert created["state"] == "ok"
    assert created["spent_usd"] == 0
    assert created["remaining_usd"] == 10
    listed = await budgets_by_id(client, auth("user"))
    assert list(listed) == ["b1"]
    assert (await client.delete("/api/budgets/b1", headers=auth("admin"))).status_code == 204
    assert await budgets_by_id(client, auth("user")) == {}


async def test_spend_states_and_scopes(client: httpx.AsyncClient, auth: Auth) -> None:
    agent, admin = auth("agent"), auth("admin")
    await put_budget(client, admin, "fleet", limit_usd=10, warn_at=[0.5])
    await put_budget(client, admin, "coder", limit_usd=3, scope={"agent_type": "coder"})
    await put_budget(client, admin, "alice", limit_usd=2, scope={"user_id": "alice"})
    await put_budget(client, admin, "flow", limit_usd=100, scope={"flow_id": "f1", "source": "api"})
    await register(client, agent, "t1", user_id="alice", flow_id="f1")
    await register(client, agent, "t2", agent_type="reviewer", source="github", flow_id="f1")
    await set_cost(client, agent, "t1", 1.25)
    await set_cost(client, agent, "t2", 4.000001)
    b = await budgets_by_id(client, auth("user"))
    assert b["fleet"]["spent_usd"] == 5.250001
    assert b["fleet"]["state"] == "warning"
    assert b["coder"]["spent_usd"] == 1.25
    assert b["coder"]["state"] == "ok"
    assert b["alice"]["spent_usd"] == 1.25
    assert b["alice"]["remaining_usd"] == 0.75
    assert b["flow"]["spent_usd"] == 1.25  # t2 is from github
    await set_cost(client, agent, "t1", 2.0)
    b = await budgets_by_id(client, auth("user"))
    assert b["alice"]["state"] == "exceeded"
    assert b["alice"]["remaining_usd"] == 0


async def test_a_task_of_another_period_does_not_count(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    agent = auth("agent")
    await put_budget(client, auth("admin"), "day", limit_usd=5)
    yesterday = datetime.now(UTC) - timedelta(days=1, hours=1)
    await register(client, agent, "old", created_at=yesterday.isoformat())
    await set_cost(client, agent, "old", 3)
    assert (await budgets_by_id(client, auth("user")))["day"]["spent_usd"] == 0


def _brute(tasks: dict[str, dict[str, Any]], scope: dict[str, str]) -> Decimal:
    return sum(
        (
            Decimal(str(t["cost"]))
            for t in tasks.values()
            if all(t[k] == v for k, v in scope.items())
        ),
        Decimal(0),
    )


SCOPES = [
    {},
    {"agent_type": "coder"},
    {"source": "github"},
    {"agent_type": "reviewer", "source": "api"},
    {"user_id": "alice"},
    {"flow_id": "f2", "agent_type": "coder"},
]
_task = st.fixed_dictionaries(
    {
        "agent_type": st.sampled_from(["coder", "reviewer"]),
        "source": st.sampled_from(["api", "github"]),
        "user_id": st.sampled_from(["alice", "bob"]),
        "flow_id": st.sampled_from(["f1", "f2"]),
        "costs": st.lists(
            st.decimals(min_value=0, max_value=50, places=6, allow_nan=False),
            min_size=1,
            max_size=3,
        ),
    }
)
_counter = itertools.count()


@given(tasks=st.lists(_task, min_size=1, max_size=8))
async def test_spend_equals_brute_force_under_concurrent_cost_updates(
    client: httpx.AsyncClient, auth: Auth, tasks: list[dict[str, Any]]
) -> None:
    """Every budget's spend equals the sum over the tasks, however cost updates of many
    tasks interleave (and whether or not the rollups have folded them yet)."""
    agent, admin = auth("agent"), auth("admin")
    run = next(_counter)
    for i, scope in enumerate(SCOPES):
        await put_budget(client, admin, f"s{i}", scope=scope, limit_usd=1e6)
    final: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(tasks):
        tid = f"r{run}-{i}"
        fields = {k: t[k] for k in ("agent_type", "source", "user_id", "flow_id")}
        await register(client, agent, tid, **fields)
        final[tid] = {**fields, "cost": t["costs"][-1]}

    async def updates(tid: str, costs: list[Decimal]) -> None:
        for cost in costs:
            await set_cost(client, agent, tid, float(cost))

    await asyncio.gather(*(updates(f"r{run}-{i}", t["costs"]) for i, t in enumerate(tasks)))
    # Tasks of earlier examples are in the database too: count them in the brute force.
    got = await budgets_by_id(client, auth("user"))
    everything = _all_tasks.setdefault(id(client), {})
    everything.update(final)
    for i, scope in enumerate(SCOPES):
        assert Decimal(str(got[f"s{i}"]["spent_usd"])) == _brute(everything, scope), scope


_all_tasks: dict[int, dict[str, dict[str, Any]]] = {}


async def test_state_changes_are_published_once(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth
) -> None:
    published: list[tuple[str, dict[str, Any]]] = []
    db = app.state.ctx.db
    inner = db.publisher

    async def spy(events: Any) -> None:
        published.extend(e for e in events if e[0] == "budgets")
        if inner is not None:
            await inner(events)

    db.publisher = spy
    agent = auth("agent")
    await put_budget(client, auth("admin"), "b", limit_usd=1, warn_at=[0.5])
    assert [p["budget"]["state"] for _, p in published] == ["ok"]
    await register(client, agent, "t1")
    await set_cost(client, agent, "t1", 0.6)
    await budgets_round(app)
    await budgets_round(app)  # nothing moved: nothing announced
    await set_cost(client, agent, "t1", 1.5)
    await budgets_round(app)
    await set_cost(client, agent, "t1", 0.1)
    await budgets_round(app)
    states = [p["budget"]["state"] for _, p in published]
    assert states == ["ok", "warning", "exceeded", "ok"]
    assert all(p["type"] == "budget_state" for _, p in published)


@pytest.mark.parametrize("action", ["hold", "hold_and_cancel"])
async def test_hold_skips_scope_at_claim_until_the_limit_is_raised(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth, action: str
) -> None:
    agent, admin = auth("agent"), auth("admin")
    await put_budget(
        client, admin, "cap", limit_usd=1, action=action, scope={"agent_type": "coder"}
    )
    await register(client, agent, "spender", status="running")
    await register(client, agent, "q1")
    await register(client, agent, "other", agent_type="reviewer")
    await register(client, agent, "busy", status="running")
    # The write that reaches the limit sets the hold in its own transaction.
    await set_cost(client, agent, "spender", 1.0)
    claim = {"agent": "a1", "agent_type": ["coder", "reviewer"]}
    r = await client.post("/api/tasks/claim", json=claim, headers=agent)
    assert r.status_code == 200
    assert r.json()["task_id"] == "other"
    r = await client.post("/api/tasks/claim", json=claim, headers=agent)
    assert r.status_code == 204
    assert (await client.get("/api/tasks/q1", headers=agent)).json()["status"] == "queued"
    assert (await budgets_by_id(client, auth("user")))["cap"]["held"] is True
    # Registering still works, and the hold_and_cancel round asks running tasks to stop.
    await register(client, agent, "q2")
    await budgets_round(app)
    busy = (await client.get("/api/tasks/busy", headers=agent)).json()
    assert busy["cancel_requested"] is (action == "hold_and_cancel")
    await put_budget(
        client, admin, "cap", limit_usd=5, action=action, scope={"agent_type": "coder"}
    )
    r = await client.post("/api/tasks/claim", json=claim, headers=agent)
    assert r.status_code == 200
    assert r.json()["task_id"] == "q1"
