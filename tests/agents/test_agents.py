"""Agents: registry, heartbeats, the online window (on a fake clock), figures, events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard_api.background import sweep_agents_once
from dashboard_api.timeutil import format_ts
from tests.support.clock import FakeClock
from tests.support.tokens import Tokens
from tests.support.ws import ChannelListener

Clocked = tuple[FastAPI, httpx.AsyncClient, Tokens]
AGENT_KEYS = {
    "name", "description", "capabilities", "status", "registered", "last_heartbeat_at",
    "running_tasks", "queued_tasks", "tasks_24h", "success_rate_24h",
}  # fmt: skip


async def _agents(client: httpx.AsyncClient, tokens: Tokens) -> dict[str, dict[str, Any]]:
    r = await client.get("/api/agents", headers=tokens.headers("user"))
    assert r.status_code == 200, r.text
    return {a["name"]: a for a in r.json()["items"]}


async def _task(
    client: httpx.AsyncClient,
    tokens: Tokens,
    *,
    task_id: str,
    agent_type: str,
    status: str,
    created_at: str | None = None,
) -> None:
    body: dict[str, Any] = {"task_id": task_id, "agent_type": agent_type, "input_message": "x"}
    if created_at is not None:
        body["created_at"] = created_at
    if status != "queued":
        body["status"] = "running"
    r = await client.post("/api/tasks", json=body, headers=tokens.headers("agent"))
    assert r.status_code == 201, r.text
    if status not in ("queued", "running"):
        r = await client.patch(
            f"/api/tasks/{task_id}", json={"status": status}, headers=tokens.headers("agent")
        )
        assert r.status_code == 200, r.text


async def test_register_update_and_list(clocked: Clocked) -> None:
    _, client, tokens = clocked
    agent = tokens.headers("agent")
    r = await client.put(
        "/api/agents/coder",
        json={"description": "Writes code", "capabilities": ["python", "git"]},
        headers=agent,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == AGENT_KEYS
    assert body["status"] == "offline"  # registered, but no heartbeat yet
    assert body["capabilities"] == ["python", "git"]
    r = await client.put("/api/agents/coder", json={"description": "Writes tests"}, headers=agent)
    assert r.status_code == 200
    assert r.json()["description"] == "Writes tests"
    assert r.json()["capabilities"] == ["python", "git"]  # left out: kept
    agents = await _agents(client, tokens)
    assert agents["coder"]["registered"] is True
    r = await client.get("/api/agents/coder", headers=tokens.headers("user"))
    assert r.json()["name"] == "coder"
    r = await client.get("/api/agents/nobody", headers=tokens.headers("user"))
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_roles_and_bad_input(clocked: Clocked) -> None:
    _, client, tokens = clocked
    assert (await client.get("/api/agents")).status_code == 401
    assert (await client.get("/api/agents", headers=tokens.headers("agent"))).status_code == 403
    r = await client.put("/api/agents/x", json={}, headers=tokens.headers("user"))
    assert r.status_code == 403
    r = await client.post("/api/agents/x/heartbeat", headers=tokens.headers("user"))
    assert r.status_code == 403
    for bad in ("-starts-with-dash", "has space", "a" * 256, "slash%2Fname", "ü"):
        r = await client.put(f"/api/agents/{bad}", json={}, headers=tokens.headers("agent"))
        assert r.status_code in (404, 422), (bad, r.status_code)
        r = await client.post(f"/api/agents/{bad}/heartbeat", headers=tokens.headers("agent"))
        assert r.status_code in (404, 422), (bad, r.status_code)
    ok = "a" * 255
    r = await client.post(f"/api/agents/{ok}/heartbeat", headers=tokens.headers("agent"))
    assert r.status_code == 204
    for body in ({"status": "sleeping"}, {"status": 1}, {"extra": True}, [1]):
        r = await client.post("/api/agents/a/heartbeat", json=body, headers=tokens.headers("agent"))
        assert r.status_code == 422, body
        assert r.headers["content-type"].startswith("application/problem+json")
    bad_bodies: tuple[dict[str, Any], ...] = (
        {"capabilities": "python"},
        {"capabilities": [""]},
        {"name": "x"},
    )
    for body in bad_bodies:
        r = await client.put("/api/agents/a", json=body, headers=tokens.headers("agent"))
        assert r.status_code == 422, body


async def test_online_window_boundary(clocked: Clocked, clock: FakeClock) -> None:
    app, client, tokens = clocked
    window = app.state.ctx.settings.agent_online_seconds
    async with ChannelListener(app, "agents") as events:
        # A heartbeat from an unknown name registers it, online.
        r = await client.post("/api/agents/runner-1/heartbeat", headers=tokens.headers("agent"))
        assert r.status_code == 204
        beat_at = clock.now()
        agents = await _agents(client, tokens)
        assert agents["runner-1"]["status"] == "online"
        assert agents["runner-1"]["last_heartbeat_at"] == format_ts(beat_at)
        first = await events.next()
        assert first["type"] == "agent_status"
        assert first["channel"] == "agents"
        assert first["agent"]["name"] == "runner-1"
        assert first["agent"]["status"] == "online"

        # Exactly at the edge of the window: still online, and the sweeper says nothing.
        clock.at = beat_at + timedelta(seconds=window)
        assert (await _agents(client, tokens))["runner-1"]["status"] == "online"
        assert await sweep_agents_once(app.state.ctx) == []
        # One millisecond later: offline on read, and announced once by the sweeper.
        clock.at = beat_at + timedelta(seconds=window, milliseconds=1)
        assert (await _agents(client, tokens))["runner-1"]["status"] == "offline"
        assert await sweep_agents_once(app.state.ctx) == ["runner-1"]
        assert await sweep_agents_once(app.state.ctx) == []
        offline = await events.next()
        assert offline["agent"]["name"] == "runner-1"
        assert offline["agent"]["status"] == "offline"

        # Back: online again (announced), then busy (announced), repeated busy (silent).
        r = await client.post(
            "/api/agents/runner-1/heartbeat", json={}, headers=tokens.headers("agent")
        )
        assert r.status_code == 204
        assert (await events.next())["agent"]["status"] == "online"
        clock.advance(1)
        r = await client.post(
            "/api/agents/runner-1/heartbeat",
            json={"status": "busy"},
            headers=tokens.headers("agent"),
        )
        assert r.status_code == 204
        assert (await events.next())["agent"]["status"] == "busy"
        assert (await _agents(client, tokens))["runner-1"]["status"] == "busy"
        clock.advance(1)
        await client.post(
            "/api/agents/runner-1/heartbeat",
            json={"status": "busy"},
            headers=tokens.headers("agent"),
        )
        assert await events.drain() == []
        # A busy agent whose heartbeats stop goes offline too.
        clock.advance(window + 0.001)
        assert (await _agents(client, tokens))["runner-1"]["status"] == "offline"


async def test_registration_is_announced(clocked: Clocked) -> None:
    app, client, tokens = clocked
    async with ChannelListener(app, "agents") as events:
        await client.put(
            "/api/agents/docs", json={"description": "d"}, headers=tokens.headers("agent")
        )
        event = await events.next()
        assert event["agent"]["name"] == "docs"
        assert event["agent"]["description"] == "d"
        # An update that changes nothing is silent.
        await client.put(
            "/api/agents/docs", json={"description": "d"}, headers=tokens.headers("agent")
        )
        assert await events.drain() == []


async def test_figures_and_agent_types_from_tasks(clocked: Clocked, clock: FakeClock) -> None:
    _, client, tokens = clocked
    now = clock.now()
    old = format_ts(now - timedelta(hours=24, seconds=1))
    edge = format_ts(now - timedelta(hours=24))
    await _task(client, tokens, task_id="q1", agent_type="triage", status="queued")
    await _task(client, tokens, task_id="q2", agent_type="triage", status="queued", created_at=old)
    await _task(client, tokens, task_id="r1", agent_type="triage", status="running")
    await _task(client, tokens, task_id="c1", agent_type="triage", status="completed")
    await _task(
        client, tokens, task_id="c2", agent_type="triage", status="completed", created_at=edge
    )
    await _task(client, tokens, task_id="f1", agent_type="triage", status="failed")
    await _task(
        client, tokens, task_id="f-old", agent_type="triage", status="failed", created_at=old
    )
    await _task(client, tokens, task_id="x1", agent_type="reviewer", status="cancelled")
    await client.put("/api/agents/idle-bot", json={}, headers=tokens.headers("agent"))
    agents = await _agents(client, tokens)
    assert list(agents) == ["idle-bot", "reviewer", "triage"]
    triage = agents["triage"]
    assert triage["registered"] is False
    assert triage["status"] == "offline"
    assert triage["last_heartbeat_at"] is None
    assert triage["running_tasks"] == 1
    assert triage["queued_tasks"] == 2
    assert triage["tasks_24h"] == 5  # q1, r1, c1, c2 (at the edge: included), f1
    assert triage["success_rate_24h"] == pytest.approx(2 / 3)
    assert agents["reviewer"]["success_rate_24h"] is None  # cancelled only
    assert agents["reviewer"]["tasks_24h"] == 1
    assert agents["idle-bot"]["tasks_24h"] == 0
    r = await client.get("/api/agents/triage", headers=tokens.headers("user"))
    assert r.json() == triage


async def test_status_counts_agents(clocked: Clocked) -> None:
    _, client, tokens = clocked
    await client.post("/api/agents/a1/heartbeat", headers=tokens.headers("agent"))
    await client.put("/api/agents/a2", json={}, headers=tokens.headers("agent"))
    await _task(client, tokens, task_id="t1", agent_type="a3", status="queued")
    r = await client.get("/api/status", headers=tokens.headers("user"))
    assert r.status_code == 200, r.text
    assert r.json()["agents"] == {"online": 1, "total": 3}
    assert r.json()["tasks"] == {"queued": 1, "running": 0}


STATUSES = st.sampled_from(["queued", "running", "completed", "failed", "cancelled"])
_example = iter(range(1_000_000))


@settings(max_examples=12)  # each example is a dozen HTTP writes; 12 x 2 backends
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), STATUSES, st.integers(0, 48 * 60)),
        max_size=6,
    )
)
async def test_figures_match_brute_force(clocked: Clocked, clock: FakeClock, rows: Any) -> None:
    """Per-agent figures equal the same figures counted by hand over the tasks written.

    Each example uses agent types of its own, so the database may keep earlier examples.
    """
    _, client, tokens = clocked
    now = clock.now()
    n = next(_example)
    written: list[tuple[str, str, str]] = []
    for i, (letter, status, minutes_ago) in enumerate(rows):
        agent_type, created = f"{letter}-{n}", format_ts(now - timedelta(minutes=minutes_ago))
        await _task(
            client, tokens, task_id=f"h{n}-{i}", agent_type=agent_type,
            status=status, created_at=created,
        )  # fmt: skip
        written.append((agent_type, status, created))
    agents = await _agents(client, tokens)
    since = format_ts(now - timedelta(hours=24))
    for name in {w[0] for w in written}:
        mine = [w for w in written if w[0] == name]
        recent = [w for w in mine if w[2] >= since]
        done = sum(w[1] == "completed" for w in recent)
        failed = sum(w[1] == "failed" for w in recent)
        got = agents[name]
        assert got["running_tasks"] == sum(w[1] == "running" for w in mine)
        assert got["queued_tasks"] == sum(w[1] == "queued" for w in mine)
        assert got["tasks_24h"] == len(recent)
        expected = None if done + failed == 0 else done / (done + failed)
        assert got["success_rate_24h"] == (None if expected is None else pytest.approx(expected))
