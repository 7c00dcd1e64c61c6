"""OAuth status: installation upserts, token status against an injected clock, scopes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from dashboard_api.app import create_app
from dashboard_api.timeutil import format_ts
from tests.support.clock import FakeClock
from tests.support.env import Backend
from tests.support.tokens import make_token

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


@dataclass
class Env:
    client: httpx.AsyncClient
    clock: FakeClock
    app: FastAPI
    admin: dict[str, str]
    user: dict[str, str]
    agent: dict[str, str]


@pytest.fixture
async def env(backend: Backend) -> AsyncIterator[Env]:
    clock = FakeClock(T0)
    settings = backend.settings(
        github_client_id="gh-id",
        github_client_secret="gh-client-secret",
        jira_client_id="jira-id",  # no secret: not configured
    )
    app = create_app(settings, clock=clock)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {}
            for role in ("admin", "user", "agent"):
                token = await make_token(app, role=role, user_id=f"{role}-1")
                headers[role] = {"Authorization": f"Bearer {token}"}
            yield Env(client, clock, app, headers["admin"], headers["user"], headers["agent"])


async def test_platforms_listed_with_configuration(env: Env) -> None:
    r = await env.client.get("/api/oauth/status", headers=env.user)
    assert r.status_code == 200
    platforms = r.json()["platforms"]
    assert [(p["platform"], p["name"], p["configured"], p["installed"]) for p in platforms] == [
        ("github", "GitHub", True, False),
        ("jira", "Jira", False, False),
        ("slack", "Slack", False, False),
    ]
    assert all(p["installations"] == [] for p in platforms)
    r = await env.client.get("/api/oauth/status/jira", headers=env.user)
    assert r.json()["platform"] == "jira"
    r = await env.client.get("/api/oauth/status/gitlab", headers=env.user)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (await env.client.get("/api/oauth/status")).status_code == 401


async def test_upsert_then_update_then_delete(env: Env) -> None:
    body = {"platform": "github", "organization": "acme", "scopes": ["repo"]}
    r = await env.client.post("/api/oauth/installations", json=body, headers=env.agent)
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["installed_at"] == format_ts(T0)
    assert first["token_status"] == "no_expiry"
    assert first["missing_scopes"] == ["read:org"]
    assert "token" not in first

    env.clock.at = T0 + timedelta(hours=1)
    body = {
        **body,
        "scopes": ["repo", "read:org", "repo"],
        "token_expires_at": "2027-01-01T00:00:00+02:00",
    }
    r = await env.client.post("/api/oauth/installations", json=body, headers=env.agent)
    assert r.status_code == 200
    second = r.json()
    assert second["installation_id"] == first["installation_id"]
    assert second["installed_at"] == first["installed_at"]
    assert second["scopes"] == ["repo", "read:org"]
    assert second["missing_scopes"] == []
    assert second["token_expires_at"] == "2026-12-31T22:00:00.000Z"
    assert second["token_status"] == "valid"

    # Leaving `token_expires_at` out keeps it; null clears it.
    r = await env.client.post(
        "/api/oauth/installations",
        json={k: v for k, v in body.items() if k != "token_expires_at"},
        headers=env.agent,
    )
    assert r.json()["token_expires_at"] == "2026-12-31T22:00:00.000Z"
    r = await env.client.post(
        "/api/oauth/installations", json={**body, "token_expires_at": None}, headers=env.agent
    )
    assert r.json()["token_status"] == "no_expiry"

    status = (await env.client.get("/api/oauth/status/github", headers=env.user)).json()
    assert status["installed"] is True
    assert [i["installation_id"] for i in status["installations"]] == [first["installation_id"]]

    iid = first["installation_id"]
    assert (
        await env.client.delete(f"/api/oauth/installations/{iid}", headers=env.agent)
    ).status_code == 403
    assert (
        await env.client.delete(f"/api/oauth/installations/{iid}", headers=env.admin)
    ).status_code == 204
    assert (
        await env.client.delete(f"/api/oauth/installations/{iid}", headers=env.admin)
    ).status_code == 404
    status = (await env.client.get("/api/oauth/status/github", headers=env.user)).json()
    assert (status["installed"], status["installations"]) == (False, [])


async def test_roles_and_validation(env: Env) -> None:
    good = {"platform": "slack", "organization": "T123", "scopes": []}
    r = await env.client.post("/api/oauth/installations", json=good, headers=env.user)
    assert r.status_code == 403
    bad_bodies = [
        {**good, "platform": "gitlab"},
        {**good, "organization": ""},
        {**good, "scopes": "repo"},
        {**good, "scopes": [""]},
        {**good, "token_expires_at": "soon"},
        {**good, "access_token": "xoxb-1"},  # tokens are never accepted
        {"platform": "slack", "scopes": []},
    ]
    for body in bad_bodies:
        r = await env.client.post("/api/oauth/installations", json=body, headers=env.agent)
        assert r.status_code == 422, body
        assert r.json()["errors"]


BOUNDARIES = [
    (-timedelta(seconds=1), "expired"),
    (timedelta(0), "expired"),
    (timedelta(seconds=1), "expiring_soon"),
    (timedelta(days=6, hours=23), "expiring_soon"),
    (timedelta(days=7), "expiring_soon"),
    (timedelta(days=7, seconds=1), "valid"),
    (timedelta(days=400), "valid"),
]


async def test_token_status_boundaries(env: Env) -> None:
    for n, (offset, expected) in enumerate(BOUNDARIES):
        body = {
            "platform": "jira",
            "organization": f"org-{n}",
            "scopes": ["read:jira-work"],
            "token_expires_at": format_ts(T0 + offset),
        }
        r = await env.client.post("/api/oauth/installations", json=body, headers=env.agent)
        assert r.status_code == 201
        assert r.json()["token_status"] == expected, offset
        assert r.json()["missing_scopes"] == ["write:jira-work"]
    listed = (await env.client.get("/api/oauth/status/jira", headers=env.user)).json()
    by_org = {i["organization"]: i["token_status"] for i in listed["installations"]}
    assert by_org == {f"org-{n}": expected for n, (_, expected) in enumerate(BOUNDARIES)}


async def test_token_status_follows_the_clock(env: Env) -> None:
    body = {
        "platform": "github",
        "organization": "acme",
        "scopes": [],
        "token_expires_at": format_ts(T0 + timedelta(days=8)),
    }
    await env.client.post("/api/oauth/installations", json=body, headers=env.agent)

    async def status() -> str:
        r = await env.client.get("/api/oauth/status/github", headers=env.user)
        return str(r.json()["installations"][0]["token_status"])

    assert await status() == "valid"
    env.clock.at = T0 + timedelta(days=1, seconds=1)
    assert await status() == "expiring_soon"
    env.clock.at = T0 + timedelta(days=8)
    assert await status() == "expired"


async def test_concurrent_reports_create_one_installation(env: Env) -> None:
    body = {"platform": "slack", "organization": "T999", "scopes": ["chat:write"]}
    answers = await asyncio.gather(
        *(
            env.client.post("/api/oauth/installations", json=body, headers=env.agent)
            for _ in range(8)
        )
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 7 + [201]
    assert len({a.json()["installation_id"] for a in answers}) == 1
    status = (await env.client.get("/api/oauth/status/slack", headers=env.user)).json()
    assert len(status["installations"]) == 1
    assert status["installations"][0]["missing_scopes"] == ["app_mentions:read"]
