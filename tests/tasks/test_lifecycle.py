"""Registration, the status state machine, claims and cancellation."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from dashboard_api.timeutil import format_ts
from tests.support.clock import FakeClock
from tests.support.env import Backend

Headers = Callable[[str], dict[str, str]]
STATUSES = ("queued", "running", "completed", "failed", "cancelled")
ALLOWED = {
    ("queued", "running"),
    ("queued", "cancelled"),
    ("queued", "failed"),
    ("running", "completed"),
    ("running", "failed"),
    ("running", "cancelled"),
}
# How to bring a new task to each status through allowed moves.
PATHS = {
    "queued": [],
    "running": ["running"],
    "completed": ["running", "completed"],
    "failed": ["failed"],
    "cancelled": ["cancelled"],
}


@pytest.fixture
def clock(app: FastAPI) -> FakeClock:
    fake = FakeClock()
    app.state.ctx.clock = fake
    return fake


async def register(
    client: httpx.AsyncClient, auth: Headers, task_id: str, **extra: Any
) -> httpx.Response:
    body = {"task_id": task_id, "agent_type": "coder", "input_message": "work", **extra}
    return await client.post("/api/tasks", json=body, headers=auth("agent"))


async def patch(
    client: httpx.AsyncClient, auth: Headers, task_id: str, **body: Any
) -> httpx.Response:
    return await client.patch(f"/api/tasks/{task_id}", json=body, headers=auth("agent"))


async def bring_to(client: httpx.AsyncClient, auth: Headers, task_id: str, status: str) -> None:
    assert (await register(client, auth, task_id)).status_code == 201
    for step in PATHS[status]:
        r = await patch(client, auth, task_id, status=step)
        assert r.status_code == 200, r.text


async def test_register_defaults_and_conflicts(
    client: httpx.AsyncClient, auth: Headers, clock: FakeClock
) -> None:
    r = await client.post(
        "/api/tasks", json={"agent_type": "coder", "input_message": "hi"}, headers=auth("agent")
    )
    assert r.status_code == 201
    task = r.json()
    assert len(task["task_id"]) == 36  # a server-made UUIDv7
    assert task["status"] == "queued"
    assert task["source"] == "api"
    assert task["created_at"] == format_ts(clock.at)
    assert task["started_at"] is None
    assert task["output_seq"] == 0
    assert task["cost_usd"] == 0
    assert task["cost_basis"] == "computed"
    assert task["metadata"] == {}
    assert task["cancel_requested"] is False

    assert (await register(client, auth, "dup")).status_code == 201
    r = await register(client, auth, "dup")
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")

    # A back-fill keeps its created_at; a running registration is started by the server.
    r = await register(
        client, auth, "back", created_at="2020-01-01T10:00:00+02:00", status="running"
    )
    assert r.json()["created_at"] == "2020-01-01T08:00:00.000Z"
    assert r.json()["started_at"] == format_ts(clock.at)
    log = (await client.get("/api/tasks/back/logs/full", headers=auth("user"))).json()
    assert [e["status"] for e in log["events"]] == ["running"]


async def test_concurrent_registration_of_one_id(client: httpx.AsyncClient, auth: Headers) -> None:
    results = await asyncio.gather(*(register(client, auth, "same") for _ in range(8)))
    codes = sorted(r.status_code for r in results)
    assert codes == [201] + [409] * 7
    # The losers wrote nothing: one status event, one task counted by the analytics.
    log = (await client.get("/api/tasks/same/logs/full", headers=auth("user"))).json()
    assert [e["status"] for e in log["events"]] == ["queued"]
    window = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
    summary = await client.get("/api/analytics/summary", params=window, headers=auth("user"))
    assert summary.json()["total_tasks"] == 1


async def test_every_move(client: httpx.AsyncClient, auth: Headers, clock: FakeClock) -> None:
    for start, target in itertools.product(STATUSES, STATUSES):
        task_id = f"m-{start}-{target}"
        await bring_to(client, auth, task_id, start)
        before = (await client.get(f"/api/tasks/{task_id}", headers=auth("user"))).json()
        clock.advance(1.5)
        r = await patch(client, auth, task_id, status=target)
        if target == start:
            assert r.status_code == 200, r.text
            after = r.json()
            assert after == before, "a repeated status is a no-op"
        elif (start, target) in ALLOWED:
            assert r.status_code == 200, (start, target, r.text)
            assert r.json()["status"] == target
        else:
            assert r.status_code == 409, (start, target, r.text)
            body = r.json()
            assert start in body["detail"]
            assert body["current_status"] == start
            assert r.headers["content-type"].startswith("application/problem+json")
            now = (await client.get(f"/api/tasks/{task_id}", headers=auth("user"))).json()
            assert now == before


async def test_timestamps_follow_the_server_clock(
    client: httpx.AsyncClient, auth: Headers, clock: FakeClock
) -> None:
    created = clock.at
    await register(client, auth, "c1")
    started = clock.advance(10)
    r = await patch(client, auth, "c1", status="running")
    assert r.json()["started_at"] == format_ts(started)
    assert r.json()["completed_at"] is None
    assert r.json()["duration_seconds"] is None
    done = clock.advance(2.25)
    r = await patch(client, auth, "c1", status="completed", result="ok")
    body = r.json()
    assert body["completed_at"] == format_ts(done)
    assert body["duration_seconds"] == 2.25
    assert body["created_at"] == format_ts(created)
    assert body["updated_at"] == format_ts(done)
    # Repeating the terminal status changes nothing, not even updated_at.
    clock.advance(5)
    r = await patch(client, auth, "c1", status="completed")
    assert r.json() == body

    # queued -> failed and queued -> cancelled: completed, but no duration (never started).
    await register(client, auth, "c2")
    r = await patch(client, auth, "c2", status="failed", error="no runner")
    assert r.json()["completed_at"] == format_ts(clock.at)
    assert r.json()["started_at"] is None
    assert r.json()["duration_seconds"] is None
    log = (await client.get("/api/tasks/c1/logs/full", headers=auth("user"))).json()
    assert [(e["status"], e["at"]) for e in log["events"]] == [
        ("queued", format_ts(created)),
        ("running", format_ts(started)),
        ("completed", format_ts(done)),
    ]


async def test_terminal_tasks_take_metrics_result_metadata(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    await bring_to(client, auth, "t1", "completed")
    r = await patch(
        client,
        auth,
        "t1",
        result="final",
        error="late warning",
        input_tokens=1_000_000,
        output_tokens=10,
        cache_read_tokens=0,
        cache_write_tokens=0,
        model="claude-sonnet-4",
        metadata={"a": 1, "b": {"c": [1, 2]}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed"
    assert body["result"] == "final"
    assert body["input_tokens"] == 1_000_000
    assert body["cost_basis"] == "computed"
    assert body["cost_usd"] == pytest.approx(3.00015)
    assert body["metadata"] == {"a": 1, "b": {"c": [1, 2]}}
    # metadata replaces, it does not merge.
    r = await patch(client, auth, "t1", metadata={"z": True})
    assert r.json()["metadata"] == {"z": True}
    # A reported cost wins over the computed one, also when tokens change later.
    r = await patch(client, auth, "t1", cost_usd=0.123456)
    assert (r.json()["cost_usd"], r.json()["cost_basis"]) == (0.123456, "reported")
    r = await patch(client, auth, "t1", input_tokens=5)
    assert (r.json()["cost_usd"], r.json()["cost_basis"]) == (0.123456, "reported")
    # But its status stays.
    r = await patch(client, auth, "t1", status="running")
    assert r.status_code == 409


async def test_patch_unknown_task_is_404(client: httpx.AsyncClient, auth: Headers) -> None:
    r = await patch(client, auth, "nope", status="running")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (await client.get("/api/tasks/nope", headers=auth("user"))).status_code == 404
    r = await client.get("/api/tasks/nope/logs/full", headers=auth("user"))
    assert r.status_code == 404
    r = await client.post("/api/tasks/nope/cancel", headers=auth("user"))
    assert r.status_code == 404
    r = await client.post("/api/tasks/nope/output", json={"content": "x"}, headers=auth("agent"))
    assert r.status_code == 404


async def test_concurrent_moves_of_one_task(client: httpx.AsyncClient, auth: Headers) -> None:
    """Racing terminal moves: exactly one wins, the rest see it and get 409 (or a no-op)."""
    await bring_to(client, auth, "race", "running")
    targets = ["completed", "failed", "cancelled"] * 4
    results = await asyncio.gather(*(patch(client, auth, "race", status=t) for t in targets))
    final = (await client.get("/api/tasks/race", headers=auth("user"))).json()["status"]
    for target, r in zip(targets, results, strict=True):
        if target == final:
            assert r.status_code == 200
        else:
            assert r.status_code == 409, r.text
    log = (await client.get("/api/tasks/race/logs/full", headers=auth("user"))).json()
    assert [e["status"] for e in log["events"]] == ["queued", "running", final]


# --- claims -------------------------------------------------------------------------------


async def claim(
    client: httpx.AsyncClient, auth: Headers, agent_type: str | list[str], agent: str = "a1"
) -> httpx.Response:
    return await client.post(
        "/api/tasks/claim", json={"agent_type": agent_type, "agent": agent}, headers=auth("agent")
    )


async def test_claim_order_and_204(client: httpx.AsyncClient, auth: Headers) -> None:
    assert (await claim(client, auth, "coder")).status_code == 204
    specs = [
        ("b", "2026-01-01T00:00:02Z", "coder"),
        ("a", "2026-01-01T00:00:02Z", "coder"),
        ("z", "2026-01-01T00:00:01Z", "coder"),
        ("r", "2026-01-01T00:00:00Z", "reviewer"),
        ("d", "2026-01-01T00:00:03Z", "docs"),
    ]
    for task_id, created, agent_type in specs:
        r = await register(client, auth, task_id, created_at=created, agent_type=agent_type)
        assert r.status_code == 201
    await register(client, auth, "r2", created_at="2025-12-31T00:00:00Z", agent_type="reviewer")
    order = []
    while (r := await claim(client, auth, "coder", agent="w1")).status_code == 200:
        body = r.json()
        assert body["status"] == "running"
        assert body["assigned_agent"] == "w1"
        assert body["started_at"] is not None
        order.append(body["task_id"])
    assert r.status_code == 204
    assert r.content == b""
    assert order == ["z", "a", "b"]
    r = await claim(client, auth, ["triage", "reviewer"])
    assert r.json()["task_id"] == "r2"
    r = await claim(client, auth, ["triage", "reviewer"])
    assert r.json()["task_id"] == "r"
    assert (await claim(client, auth, ["triage", "reviewer"])).status_code == 204
    assert (await claim(client, auth, ["docs"])).json()["task_id"] == "d"


async def test_claim_skips_non_queued(client: httpx.AsyncClient, auth: Headers) -> None:
    await bring_to(client, auth, "done", "completed")
    await bring_to(client, auth, "cancelled", "cancelled")
    await bring_to(client, auth, "run", "running")
    assert (await claim(client, auth, "coder")).status_code == 204


async def test_concurrent_claims_never_share(
    client: httpx.AsyncClient, auth: Headers, backend: Backend
) -> None:
    for i in range(10):
        await register(client, auth, f"q{i:02d}", created_at=f"2026-01-01T00:00:{i:02d}Z")
    results = await asyncio.gather(*(claim(client, auth, "coder", f"w{i}") for i in range(20)))
    got = [r.json()["task_id"] for r in results if r.status_code == 200]
    assert sorted(r.status_code for r in results) == [200] * 10 + [204] * 10
    assert sorted(got) == [f"q{i:02d}" for i in range(10)]
    for r in results:
        if r.status_code == 200:
            task = await client.get(f"/api/tasks/{r.json()['task_id']}", headers=auth("user"))
            assert task.json()["assigned_agent"] == r.json()["assigned_agent"]


# --- cancel -------------------------------------------------------------------------------


@pytest.fixture
def published(app: FastAPI) -> list[tuple[str, dict[str, Any]]]:
    """Events the app publishes after commits (replacing the broker publisher)."""
    events: list[tuple[str, dict[str, Any]]] = []

    async def publisher(batch: Sequence[tuple[str, dict[str, Any]]]) -> None:
        events.extend(batch)

    app.state.ctx.db.publisher = publisher
    return events


async def test_cancel(
    client: httpx.AsyncClient,
    auth: Headers,
    clock: FakeClock,
    published: list[tuple[str, dict[str, Any]]],
) -> None:
    await register(client, auth, "cq")
    r = await client.post("/api/tasks/cq/cancel", headers=auth("user"))
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert r.json()["completed_at"] == format_ts(clock.at)
    assert r.json()["cancel_requested"] is False

    await bring_to(client, auth, "cr", "running")
    published.clear()
    r = await client.post("/api/tasks/cr/cancel", headers=auth("user"))
    assert r.status_code == 200
    assert r.json()["status"] == "running"
    assert r.json()["cancel_requested"] is True
    cancel_events = [(ch, p) for ch, p in published if p.get("type") == "task_cancel_requested"]
    assert [ch for ch, _ in cancel_events] == ["task:cr"]
    assert cancel_events[0][1]["task_id"] == "cr"
    # Asking again is harmless and emits nothing new.
    published.clear()
    r = await client.post("/api/tasks/cr/cancel", headers=auth("admin"))
    assert r.status_code == 200
    assert not [p for _, p in published if p.get("type") == "task_cancel_requested"]
    # The agent acts on it.
    r = await patch(client, auth, "cr", status="cancelled")
    assert r.json()["status"] == "cancelled"

    for status in ("completed", "failed", "cancelled"):
        await bring_to(client, auth, f"ct-{status}", status)
        r = await client.post(f"/api/tasks/ct-{status}/cancel", headers=auth("user"))
        assert r.status_code == 409
        assert status in r.json()["detail"]


async def test_status_events_published_after_commit(
    client: httpx.AsyncClient, auth: Headers, published: list[tuple[str, dict[str, Any]]]
) -> None:
    await register(client, auth, "ev")
    await patch(client, auth, "ev", status="running")
    statuses = [
        p["status"] for ch, p in published if ch == "task:ev" and p["type"] == "task_status"
    ]
    assert statuses == ["queued", "running"]
    # A refused move publishes nothing.
    published.clear()
    await patch(client, auth, "ev", status="queued")
    assert published == []
