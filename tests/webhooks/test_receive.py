"""Receiving provider webhooks: signatures, outcomes, idempotency, tasks from events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from dashboard_api.app import create_app
from tests.support.env import Backend
from tests.support.tokens import make_token
from tests.support.webhooks import (
    SECRETS,
    configure,
    dumps,
    github_headers,
    jira_headers,
    slack_headers,
)

Auth = Callable[[str], dict[str, str]]


async def _events(client: httpx.AsyncClient, auth: Auth, **params: Any) -> list[dict[str, Any]]:
    r = await client.get(
        "/api/webhooks/events", params={"per_page": 200, **params}, headers=auth("user")
    )
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_github_issue_opened_creates_a_task(
    client: httpx.AsyncClient, auth: Auth, published: list[tuple[str, dict[str, Any]]]
) -> None:
    await configure(client, auth, ["github"])
    payload = {
        "action": "opened",
        "issue": {"number": 7, "title": "Crash on save", "body": "Steps: click save."},
        "sender": {"login": "octo", "type": "User"},
    }
    body = dumps(payload)
    r = await client.post(
        "/api/webhooks/github/receive",
        content=body,
        headers=github_headers(SECRETS["github"], body, delivery="gh-1"),
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["event_type"] == "issues.opened"
    assert answer["duplicate"] is False
    task_id = answer["task_id"]
    assert task_id

    task = (await client.get(f"/api/tasks/{task_id}", headers=auth("user"))).json()
    assert task["source"] == "github"
    assert task["agent_type"] == "general"
    assert task["input_message"] == "Crash on save\n\nSteps: click save."
    assert task["status"] == "queued"

    (event,) = await _events(client, auth)
    assert event["status"] == "success"
    assert event["delivery_id"] == "gh-1"
    assert event["task_id"] == task_id
    assert event["payload_bytes"] == len(body)
    assert "payload" not in event
    detail = (
        await client.get(f"/api/webhooks/events/{event['event_id']}", headers=auth("user"))
    ).json()
    assert detail["payload"] == payload

    webhook_events = [p for channel, p in published if channel == "webhooks"]
    assert webhook_events == [{"type": "webhook_event", "event": event}]


async def test_github_rejections_are_recorded(client: httpx.AsyncClient, auth: Auth) -> None:
    url = "/api/webhooks/github/receive"
    body = dumps({"action": "created", "comment": {"body": "hi"}})
    good = github_headers(SECRETS["github"], body, event="issue_comment", delivery="x-1")

    # Not configured yet: 403 (recorded).
    r = await client.post(url, content=body, headers=good)
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")
    await configure(client, auth, ["github"])

    cases: list[tuple[int, bytes, dict[str, str]]] = [
        (401, body, github_headers("wrong-secret", body, event="issue_comment")),
        (401, body + b" ", good),  # tampered body
        (401, body, {k: v for k, v in good.items() if k != "X-Hub-Signature-256"}),
        (401, body, {**good, "X-Hub-Signature-256": "sha1=" + good["X-Hub-Signature-256"][7:]}),
        (401, body, {**good, "X-Hub-Signature-256": "sha256=" + "g" * 64}),
        (400, body, {k: v for k, v in good.items() if k != "X-GitHub-Event"}),
        (400, body, {k: v for k, v in good.items() if k != "X-GitHub-Delivery"}),
        (400, b"not json", github_headers(SECRETS["github"], b"not json", delivery="x-2")),
        (400, b"[1, 2]", github_headers(SECRETS["github"], b"[1, 2]", delivery="x-3")),
    ]
    for status, content, headers in cases:
        r = await client.post(url, content=content, headers=headers)
        assert r.status_code == status, (status, headers, r.text)
        problem = r.json()
        assert problem["status"] == status
        assert "WWW-Authenticate" not in r.headers

    r = await client.put("/api/webhooks/github", json={"enabled": False}, headers=auth("admin"))
    assert r.json() == {**r.json(), "enabled": False, "configured": True}
    r = await client.post(url, content=body, headers=good)
    assert r.status_code == 403

    events = await _events(client, auth)
    assert len(events) == 2 + len(cases)
    assert {e["status"] for e in events} == {"failed"}
    assert all(e["task_id"] is None and e["error"] for e in events)
    # Unverified deliveries keep no payload.
    detail = (
        await client.get(f"/api/webhooks/events/{events[0]['event_id']}", headers=auth("user"))
    ).json()
    assert detail["payload"] is None

    # Unknown provider: 404, nothing recorded.
    r = await client.post("/api/webhooks/gitlab/receive", content=body, headers=good)
    assert r.status_code == 404
    assert len(await _events(client, auth)) == len(events)


async def test_duplicate_delivery_recorded_once_under_concurrency(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    await configure(client, auth, ["github"])
    body = dumps({"action": "created", "comment": {"body": "please fix"}, "issue": {}})
    headers = github_headers(SECRETS["github"], body, event="issue_comment", delivery="dup-1")

    # A failed attempt with the same delivery id does not block the valid retry.
    bad = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert (
        await client.post("/api/webhooks/github/receive", content=body, headers=bad)
    ).status_code == 401

    answers = await asyncio.gather(
        *(
            client.post("/api/webhooks/github/receive", content=body, headers=headers)
            for _ in range(12)
        )
    )
    assert [a.status_code for a in answers] == [200] * 12
    results = [a.json() for a in answers]
    assert sum(not r["duplicate"] for r in results) == 1
    assert len({r["event_id"] for r in results}) == 1
    assert len({r["task_id"] for r in results}) == 1

    successes = await _events(client, auth, status="success")
    assert len(successes) == 1
    tasks = (
        await client.get("/api/tasks", params={"source": "github"}, headers=auth("user"))
    ).json()
    assert tasks["total"] == 1
    assert tasks["items"][0]["input_preview"] == "please fix"


async def test_slack_signature_timestamp_and_challenge(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    await configure(client, auth, ["slack"])
    url = "/api/webhooks/slack/receive"
    now = int(time.time())
    secret = SECRETS["slack"]

    challenge = dumps({"type": "url_verification", "challenge": "abc123", "token": "t"})
    r = await client.post(
        url, content=challenge, headers=slack_headers(secret, challenge, timestamp=now)
    )
    assert r.status_code == 200
    assert r.json() == {"challenge": "abc123"}

    mention = dumps(
        {
            "type": "event_callback",
            "event_id": "Ev1",
            "event": {"type": "app_mention", "text": "<@U1> deploy please", "user": "U2"},
        }
    )
    r = await client.post(
        url, content=mention, headers=slack_headers(secret, mention, timestamp=now)
    )
    assert r.status_code == 200
    assert r.json()["event_type"] == "app_mention"
    task = (await client.get(f"/api/tasks/{r.json()['task_id']}", headers=auth("user"))).json()
    assert (task["source"], task["input_message"]) == ("slack", "<@U1> deploy please")

    # A bot's own mention creates no task.
    bot = dumps(
        {
            "type": "event_callback",
            "event_id": "Ev2",
            "event": {"type": "app_mention", "text": "x", "bot_id": "B1"},
        }
    )
    r = await client.post(url, content=bot, headers=slack_headers(secret, bot, timestamp=now))
    assert r.status_code == 200
    assert r.json()["task_id"] is None

    stale = slack_headers(secret, mention, timestamp=now - 400)
    future = slack_headers(secret, mention, timestamp=now + 400)
    cases = [
        stale,
        future,
        slack_headers("wrong", mention, timestamp=now),
        {**slack_headers(secret, mention, timestamp=now), "X-Slack-Request-Timestamp": "soon"},
        {
            k: v
            for k, v in slack_headers(secret, mention, timestamp=now).items()
            if k != "X-Slack-Signature"
        },
        {
            k: v
            for k, v in slack_headers(secret, mention, timestamp=now).items()
            if k != "X-Slack-Request-Timestamp"
        },
    ]
    for headers in cases:
        r = await client.post(url, content=mention, headers=headers)
        assert r.status_code == 401, (cases.index(headers), r.text)
    # Within the tolerance is fine (the delivery id repeats: 200, recorded once).
    ok = slack_headers(secret, mention, timestamp=now - 250)
    r = await client.post(url, content=mention, headers=ok)
    assert r.status_code == 200
    assert r.json()["duplicate"] is True

    events = await _events(client, auth, source="slack")
    types = sorted(e["event_type"] for e in events if e["status"] == "success")
    assert types == ["app_mention", "app_mention", "url_verification"]
    assert sum(e["status"] == "failed" for e in events) == len(cases)


async def test_jira_events(client: httpx.AsyncClient, auth: Auth) -> None:
    await configure(client, auth, ["jira"])
    url = "/api/webhooks/jira/receive"
    secret = SECRETS["jira"]
    created = dumps(
        {
            "webhookEvent": "jira:issue_created",
            "issue": {"key": "OPS-1", "fields": {"summary": "Disk full", "description": "on db-2"}},
        }
    )
    r = await client.post(
        url, content=created, headers=jira_headers(secret, created, delivery="j-1")
    )
    assert r.status_code == 200, r.text
    assert r.json()["event_type"] == "jira:issue_created"
    task = (await client.get(f"/api/tasks/{r.json()['task_id']}", headers=auth("user"))).json()
    assert (task["source"], task["input_message"]) == ("jira", "Disk full\n\non db-2")

    comment = dumps({"webhookEvent": "comment_created", "comment": {"body": "any update?"}})
    r = await client.post(url, content=comment, headers=jira_headers(secret, comment))
    assert r.status_code == 200
    task = (await client.get(f"/api/tasks/{r.json()['task_id']}", headers=auth("user"))).json()
    assert task["input_message"] == "any update?"

    updated = dumps({"webhookEvent": "jira:issue_updated", "issue": {"key": "OPS-1"}})
    r = await client.post(url, content=updated, headers=jira_headers(secret, updated))
    assert r.status_code == 200
    assert r.json()["task_id"] is None

    for headers in (
        jira_headers("nope", updated),
        {"Content-Type": "application/json"},
        {"X-Hub-Signature": hex_only(secret, updated)},
    ):
        r = await client.post(url, content=updated, headers=headers)
        assert r.status_code == 401
    r = await client.post(url, content=updated + b"x", headers=jira_headers(secret, updated))
    assert r.status_code == 401

    events = await _events(client, auth, source="jira", status="failed")
    assert len(events) == 4
    # What an unverified delivery claims to be is kept (unparsable: `unknown`).
    assert sorted(e["event_type"] for e in events) == ["jira:issue_updated"] * 3 + ["unknown"]


def hex_only(secret: str, body: bytes) -> str:
    from tests.support.webhooks import hex_hmac

    return hex_hmac(secret, body)  # without the "sha256=" prefix: refused


async def test_body_over_the_limit_is_413_and_recorded(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    await configure(client, auth, ["github"])
    body = b'{"a": "' + b"x" * (1024 * 1024) + b'"}'
    r = await client.post(
        "/api/webhooks/github/receive",
        content=body,
        headers=github_headers(SECRETS["github"], body, event="push", delivery="big"),
    )
    assert r.status_code == 413
    assert r.json()["status"] == 413

    async def chunks() -> Any:  # no Content-Length: the limit applies while reading
        for _ in range(5):
            yield b"y" * (300 * 1024)

    r = await client.post(
        "/api/webhooks/github/receive", content=chunks(), headers={"X-GitHub-Event": "push"}
    )
    assert r.status_code == 413
    events = await _events(client, auth)
    assert [e["status"] for e in events] == ["failed", "failed"]
    assert all(e["payload_bytes"] > 1024 * 1024 for e in events)


async def test_task_creation_can_be_turned_off(backend: Backend) -> None:
    app = create_app(backend.settings(webhook_create_tasks=False))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            admin = await make_token(app, role="admin", user_id="root")

            def auth(_: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {admin}"}

            await configure(client, auth, ["github"])
            body = dumps({"action": "opened", "issue": {"title": "t", "body": "b"}})
            r = await client.post(
                "/api/webhooks/github/receive",
                content=body,
                headers=github_headers(SECRETS["github"], body),
            )
            assert r.status_code == 200
            assert r.json()["task_id"] is None
            assert (await client.get("/api/tasks", headers=auth("admin"))).json()["total"] == 0
