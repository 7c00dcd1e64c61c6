"""The hot paths run statements SQLAlchemy compiles once per process, not once per request.

A statement without a cache key (a multi-row `insert(t).values(rows)`, say), or whose key
changes with its values, is compiled on every execution: on task registration that was
half of the server CPU the analytics rollups cost. This test runs the producer and
dashboard hot paths three times with fresh ids and values. It fails on any statement
without a cache key, and on SQL that missed the compiled cache in both the second and the
third round. (A statement first run in the second round, a fold that ran only then, say,
compiles once; one whose shape follows the data, as the `q` count statement's list of
hours does, compiles once per shape.)
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.engine.interfaces import CacheStats
from sqlalchemy.sql.compiler import DDLCompiler

from tests.support.statements import listening
from tests.support.tokens import Headers


async def _round(client: httpx.AsyncClient, auth: Headers, k: int) -> None:
    async def ok(r: httpx.Response, status: int = 200) -> httpx.Response:
        assert r.status_code == status, r.text
        return r

    agent, user = auth("agent"), auth("user")
    post, get = client.post, client.get
    # Producers: register (one back-filled, with a model), move, append, report metrics.
    bodies = (
        {"agent_type": "coder", "input_message": f"fix bug {k}", "source": "github",
         "model": "claude-sonnet-4", "created_at": f"2025-0{k}-03T10:0{k}:00Z"},
        {"agent_type": "reviewer", "input_message": f"review {k}", "user_id": "alice"},
        {"agent_type": "coder", "input_message": f"queued {k}"},
    )  # fmt: skip
    for n, body in enumerate(bodies):
        await ok(
            await post("/api/tasks", json={**body, "task_id": f"t{k}-{n}"}, headers=agent), 201
        )
    await ok(await client.patch(f"/api/tasks/t{k}-0", json={"status": "running"}, headers=agent))
    for chunk in range(3):
        line = {"content": f"line {chunk} of {k}\n"}
        await ok(await post(f"/api/tasks/t{k}-0/output", json=line, headers=agent))
    done = {"status": "completed", "input_tokens": 100 * k, "output_tokens": 7 * k, "result": "ok"}
    await ok(await client.patch(f"/api/tasks/t{k}-0", json=done, headers=agent))
    claim = {"agent_type": "reviewer", "agent": f"a{k}"}
    await ok(await post("/api/tasks/claim", json=claim, headers=agent))
    await ok(await post(f"/api/tasks/t{k}-2/cancel", headers=user))
    # The dashboard: lists (filters, q, a second page), a task, its log, analytics.
    first = (await ok(await get("/api/tasks", params={"per_page": 2}, headers=user))).json()
    lists: tuple[dict[str, Any], ...] = (
        {"per_page": 2, "cursor": first["next_cursor"]},
        {"status": "completed"},
        {"agent_type": "coder", "source": "github"},
        {"q": "bug"},
    )
    for params in lists:
        await ok(await get("/api/tasks", params=params, headers=user))
    await ok(await get(f"/api/tasks/t{k}-0", headers=user))
    await ok(await get(f"/api/tasks/t{k}-0/logs/full", headers=user))
    window = {"from": "2025-01-01T00:00:00Z", "to": "2025-12-31T00:00:00Z"}
    by_day = {**window, "period": "day", "tz": "Europe/Paris"}
    await ok(await get("/api/analytics/summary", params=window, headers=user))
    await ok(await get("/api/analytics/costs/histogram", params=by_day, headers=user))
    await ok(await get("/api/analytics/performance", params=window, headers=user))
    # Agents, a conversation whose task ends (its reply), the status page.
    await ok(
        await client.put(f"/api/agents/bot{k}", json={"capabilities": ["x"]}, headers=agent), 201
    )
    await ok(
        await post(f"/api/agents/bot{k}/heartbeat", json={"status": "busy"}, headers=agent), 204
    )
    await ok(await get("/api/agents", headers=user))
    chat = (
        await ok(await post("/api/conversations", json={"title": f"c{k}"}, headers=user), 201)
    ).json()
    path = f"/api/conversations/{chat['conversation_id']}"
    message = {"content": f"please {k}", "create_task": True}
    task_id = (await ok(await post(f"{path}/messages", json=message, headers=user), 201)).json()[
        "task_id"
    ]
    await ok(await client.patch(f"/api/tasks/{task_id}", json={"status": "running"}, headers=agent))
    await ok(await client.patch(f"/api/tasks/{task_id}", json=done, headers=agent))
    await ok(await post(f"{path}/tasks", json={"task_id": f"t{k}-1"}, headers=user), 204)
    await ok(await get(f"{path}/messages", headers=user))
    await ok(await get("/api/conversations", headers=user))
    await ok(await get("/api/status", headers=user))


async def test_hot_paths_compile_each_statement_once(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    compiled: list[set[str]] = []
    uncached: set[str] = set()

    def note(_c: Any, _cur: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        if context.compiled is None or isinstance(context.compiled, DDLCompiler):
            return
        if context.cache_hit is CacheStats.CACHE_MISS:
            compiled[-1].add(statement)
        elif context.cache_hit is not CacheStats.CACHE_HIT:
            uncached.add(statement)

    with listening(app.state.ctx.db.engines, note):
        for k in (1, 2, 3):
            compiled.append(set())
            await _round(client, auth, k)
    assert len(compiled[0]) > 10, "the listener saw too few compilations to be listening"
    assert not uncached, "\n\n".join(sorted(uncached))
    again = compiled[1] & compiled[2]
    assert not again, "\n\n".join(sorted(again))
