"""`hold` across two replicas on one PostgreSQL database: concurrent cost writes cannot
both miss the limit, and no claim on either replica hands out work of a held scope once
the write that reached the limit has returned."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from dashboard_api.app import create_app
from tests.guards.conftest import QUIET_JOBS
from tests.support.env import Backend
from tests.support.tokens import make_token

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def replicas(
    backend: Backend,
) -> AsyncIterator[list[tuple[httpx.AsyncClient, dict[str, str], dict[str, str]]]]:
    async with contextlib.AsyncExitStack() as stack:
        out = []
        for _ in range(2):
            app = create_app(backend.settings(**QUIET_JOBS))
            await stack.enter_async_context(
                LifespanManager(app, startup_timeout=30, shutdown_timeout=30)
            )
            admin = {
                "Authorization": f"Bearer {await make_token(app, role='admin', user_id='root')}"
            }
            agent = {"Authorization": f"Bearer {await make_token(app, role='agent', user_id='a')}"}
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r")
            )
            out.append((client, admin, agent))
        yield out


# PostgreSQL only: two replicas share a PostgreSQL database.
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def _ok(response: Any, status: int = 200) -> dict[str, Any]:
    r = await response
    assert r.status_code == status, r.text
    return dict(r.json()) if r.content else {}


async def test_concurrent_cost_writes_on_two_replicas_cannot_both_miss_the_limit(
    backend: Backend,
) -> None:
    async with replicas(backend) as (a, b):
        for round_ in range(6):
            budget = {
                "name": "cap",
                "period": "day",
                "limit_usd": 1,
                "action": "hold",
                "scope": {"agent_type": f"c{round_}"},
            }
            await _ok(a[0].put(f"/api/budgets/cap{round_}", json=budget, headers=a[1]))
            for side, name in ((a, "x"), (b, "y")):
                body = {
                    "task_id": f"{name}{round_}",
                    "agent_type": f"c{round_}",
                    "input_message": "i",
                    "status": "running",
                }
                await _ok(side[0].post("/api/tasks", json=body, headers=side[2]), 201)
            await _ok(
                a[0].post(
                    "/api/tasks",
                    json={
                        "task_id": f"q{round_}",
                        "agent_type": f"c{round_}",
                        "input_message": "i",
                    },
                    headers=a[2],
                ),
                201,
            )
            # Each write alone stays under the limit; together they reach it.
            await asyncio.gather(
                _ok(a[0].patch(f"/api/tasks/x{round_}", json={"cost_usd": 0.6}, headers=a[2])),
                _ok(b[0].patch(f"/api/tasks/y{round_}", json={"cost_usd": 0.6}, headers=b[2])),
            )
            # No evaluation job runs here: the hold was set by whichever write came second.
            for side in (a, b):
                r = await side[0].post(
                    "/api/tasks/claim",
                    json={"agent": "z", "agent_type": f"c{round_}"},
                    headers=side[2],
                )
                assert r.status_code == 204, r.text
            listed = await _ok(b[0].get("/api/budgets", headers=b[1]))
            (cap,) = [x for x in listed["items"] if x["budget_id"] == f"cap{round_}"]
            assert cap["held"] is True
            assert cap["spent_usd"] == 1.2


# PostgreSQL only: two replicas share a PostgreSQL database.
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_no_claim_slips_past_a_limit_on_either_replica(backend: Backend) -> None:
    async with replicas(backend) as (a, b):
        budget = {
            "name": "cap",
            "period": "day",
            "limit_usd": 1,
            "action": "hold",
            "scope": {"agent_type": "coder"},
        }
        await _ok(a[0].put("/api/budgets/cap", json=budget, headers=a[1]))
        await _ok(
            a[0].post(
                "/api/tasks",
                json={
                    "task_id": "spender",
                    "agent_type": "coder",
                    "input_message": "i",
                    "status": "running",
                },
                headers=a[2],
            ),
            201,
        )
        for i in range(60):
            side = (a, b)[i % 2]
            await _ok(
                side[0].post(
                    "/api/tasks",
                    json={"task_id": f"q{i:02d}", "agent_type": "coder", "input_message": "i"},
                    headers=side[2],
                ),
                201,
            )
        limit_reached_at: list[float] = []
        claims: list[tuple[float, int]] = []  # (started, status)

        async def claimer(side: Any) -> None:
            while not limit_reached_at or time.monotonic() - limit_reached_at[0] < 1.0:
                started = time.monotonic()
                r = await side[0].post(
                    "/api/tasks/claim", json={"agent": "z", "agent_type": "coder"}, headers=side[2]
                )
                claims.append((started, r.status_code))

        async def spend() -> None:
            await asyncio.sleep(0.2)
            await _ok(a[0].patch("/api/tasks/spender", json={"cost_usd": 1.0}, headers=a[2]))
            limit_reached_at.append(time.monotonic())

        await asyncio.gather(claimer(a), claimer(b), claimer(a), claimer(b), spend())
        after = [status for started, status in claims if started > limit_reached_at[0]]
        assert after, "no claim started after the limit was reached"
        assert set(after) == {204}
        before = [status for started, status in claims if started <= limit_reached_at[0]]
        assert 200 in before  # the claimers did take work until then
        queued = 60 - before.count(200)
        assert queued > 0
        # Nothing was dropped: raising the limit hands the held tasks out again.
        await _ok(b[0].put("/api/budgets/cap", json={**budget, "limit_usd": 100}, headers=b[1]))
        r = await b[0].post(
            "/api/tasks/claim", json={"agent": "z", "agent_type": "coder"}, headers=b[2]
        )
        assert r.status_code == 200
