"""Alert rules, channels and notifications (docs/api.md §15): the state machine, deliveries to
a real local receiver, signatures, the SSRF guard."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from dashboard_api.db.models.guards import AlertChannel
from tests.guards.helpers import (
    Auth,
    alerts,
    alerts_round,
    attempts,
    put_channel,
    put_rule,
    register,
    sender_round,
    set_cost,
)
from tests.guards.receiver import running_receiver


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """An implementation of docs/api.md §15's signature written from the text alone."""
    timestamp = headers["x-dashboard-timestamp"]
    message = timestamp.encode("ascii") + b"." + body
    expected = "sha256=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("x-dashboard-signature", ""))


async def test_channel_secrets_are_sealed_and_never_shown(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret, url = "s3cr3t-Zq9", "http://127.0.0.1:9/services/T000/B000/tokenXYZ"
    r = await put_channel(client, auth, "ops", type="webhook", url=url, secret=secret)
    assert r.status_code == 200, r.text
    assert r.json()["url"] == "http://127.0.0.1:9/…"
    assert r.json()["has_secret"] is True
    listed = await client.get("/api/alerts/channels", headers=auth("admin"))
    assert secret not in listed.text
    assert "tokenXYZ" not in listed.text
    assert (await client.get("/api/alerts/channels", headers=auth("user"))).status_code == 403
    async with app.state.ctx.db.read() as session:
        row = (await session.scalars(select(AlertChannel))).one()
    assert secret not in row.sealed_secret
    assert "tokenXYZ" not in row.sealed_url
    assert secret not in caplog.text
    assert "tokenXYZ" not in caplog.text
    # Leaving the secret out keeps it; null removes it.
    r = await put_channel(client, auth, "ops", type="webhook", url=url)
    assert r.json()["has_secret"] is True
    r = await put_channel(client, auth, "ops", type="webhook", url=url, secret=None)
    assert r.json()["has_secret"] is False


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/x",
        "http://192.168.0.1/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://0.0.0.0/x",
        "http://100.64.0.1/x",
        "http://2130706433/x",  # 127.0.0.1 written as one number
        "http://0x7f.0.0.1/x",
        "ftp://example.com/x",
        "http://user:pw@example.com/x",
        "http://no-such-host.invalid/x",
    ],
)
async def test_ssrf_refused_on_put(
    client: httpx.AsyncClient, auth: Auth, app: FastAPI, url: str
) -> None:
    ctx = app.state.ctx
    ctx.settings = ctx.settings.model_copy(update={"alerts_allow_private_urls": False})
    r = await put_channel(client, auth, "c", type="webhook", url=url)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "url"]


async def test_public_address_accepted(client: httpx.AsyncClient, auth: Auth, app: FastAPI) -> None:
    ctx = app.state.ctx
    ctx.settings = ctx.settings.model_copy(update={"alerts_allow_private_urls": False})
    r = await put_channel(client, auth, "c", type="slack", url="https://93.184.215.14/services/x")
    assert r.status_code == 200, r.text


async def test_rules_validate_their_channels_and_kind(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    r = await client.put(
        "/api/alerts/rules/r1",
        json={"name": "r", "kind": "cost_usd", "threshold": 1, "channels": ["nope"]},
        headers=auth("admin"),
    )
    assert r.status_code == 422
    for bad in (
        {"kind": "weather"},
        {"window_minutes": 0},
        {"window_minutes": 1441},
        {"threshold": -1},
    ):
        body = {"name": "r", "kind": "cost_usd", "threshold": 1, **bad}
        r = await client.put("/api/alerts/rules/r1", json=body, headers=auth("admin"))
        assert r.status_code == 422, bad
    body = {"name": "r", "kind": "cost_usd", "threshold": 1}
    assert (
        await client.put("/api/alerts/rules/r1", json=body, headers=auth("user"))
    ).status_code == 403
    await put_rule(client, auth, "r1", scope={"agent_type": "coder"})
    r = await client.get("/api/alerts/rules", headers=auth("user"))
    assert [x["rule_id"] for x in r.json()["items"]] == ["r1"]
    assert r.json()["items"][0]["scope"] == {"agent_type": "coder"}


async def test_fire_once_resolve_once_no_repeats(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth
) -> None:
    """A rule notifies once when it starts holding and once when it stops; rounds while
    the state holds change nothing; each flap is one episode, one alert."""
    events: list[dict[str, Any]] = []
    db = app.state.ctx.db
    inner = db.publisher

    async def spy(batch: Any) -> None:
        events.extend(p for ch, p in batch if ch == "alerts")
        if inner is not None:
            await inner(batch)

    db.publisher = spy
    async with running_receiver() as receiver:
        assert (
            await put_channel(client, auth, "hook", type="webhook", url=receiver.url)
        ).status_code == 200
        await put_rule(client, auth, "spend", threshold=2, channels=["hook"], window_minutes=60)
        agent = auth("agent")
        await register(client, agent, "t1")
        assert await alerts_round(app) == []
        await set_cost(client, agent, "t1", 2.5)
        changed = await alerts_round(app)
        assert [a["state"] for a in changed] == ["firing"]
        assert changed[0]["value"] == 2.5
        for _ in range(3):
            assert await alerts_round(app) == []
        await set_cost(client, agent, "t1", 1.0)
        assert [a["state"] for a in await alerts_round(app)] == ["resolved"]
        assert await alerts_round(app) == []
        # Flapping: every transition is one change, never a repeat.
        for cost in (3.0, 3.5, 0.5, 0.4, 4.0):
            await set_cost(client, agent, "t1", cost)
            await alerts_round(app)
        listed = await alerts(client, auth)
        assert [a["state"] for a in listed] == ["firing", "resolved", "resolved"]
        assert len(await alerts(client, auth, state="firing")) == 1
        assert [e["alert"]["state"] for e in events] == [
            "firing",
            "resolved",
            "firing",
            "resolved",
            "firing",
        ]
        assert all(e["type"] == "alert" for e in events)
        while await sender_round(app):
            pass
        # One notification per transition, delivered; a send the receiver got but whose
        # answer came too late for this loaded machine is retried: one request per attempt.
        alert_ids = {e["alert"]["alert_id"] for e in events}
        tries = [t for a in sorted(alert_ids) for t in await attempts(client, auth, a)]
        assert len(receiver.requests) == len(tries)
        assert {t["delivery_state"] for t in tries} == {"delivered"}
        sent = {
            (json.loads(r.body)["alert_id"], json.loads(r.body)["state"]) for r in receiver.requests
        }
        assert sent == {(e["alert"]["alert_id"], e["alert"]["state"]) for e in events}


async def test_deliveries_fail_time_out_and_recover(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth
) -> None:
    secret = "hmac-key-for-tests"
    ctx = app.state.ctx
    ctx.settings = ctx.settings.model_copy(update={"alerts_delivery_timeout_seconds": 1.0})
    async with running_receiver(script=[500, "hang", 503]) as receiver:
        r = await put_channel(client, auth, "hook", type="webhook", url=receiver.url, secret=secret)
        assert r.status_code == 200
        await put_rule(client, auth, "spend", threshold=1, channels=["hook"])
        await register(client, auth("agent"), "t1")
        await set_cost(client, auth("agent"), "t1", 5)
        (alert,) = await alerts_round(app)
        for _ in range(100):
            await sender_round(app)
            tries = await attempts(client, auth, alert["alert_id"])
            if tries and tries[-1]["delivery_state"] != "pending":
                break
            await asyncio.sleep(0.2)  # the backoff before the next try
        tries = await attempts(client, auth, alert["alert_id"])
        assert [t["attempt"] for t in tries] == [1, 2, 3, 4]
        assert [t["status_code"] for t in tries] == [500, None, 503, 200]
        assert tries[1]["error"].startswith("timed out")
        assert tries[-1]["delivery_state"] == "delivered"
        assert tries[-1]["response_excerpt"].startswith('{"ok": true}')
        assert len(tries[-1]["response_excerpt"]) <= 512
        # One request per attempt, each signed and verifiable by an independent HMAC.
        assert len(receiver.requests) == 4
        for req in receiver.requests:
            assert req.path == "/hooks/secret-path-XYZ"
            assert req.headers["x-dashboard-alert-id"] == alert["alert_id"]
            assert verify_signature(secret, req.headers, req.body)
            assert not verify_signature("another-key", req.headers, req.body)
            assert json.loads(req.body) == alert


async def test_slack_message(app: FastAPI, client: httpx.AsyncClient, auth: Auth) -> None:
    async with running_receiver() as receiver:
        await put_channel(client, auth, "sl", type="slack", url=receiver.url)
        await put_rule(client, auth, "spend", name="Spend is high", threshold=1, channels=["sl"])
        await register(client, auth("agent"), "t1")
        await set_cost(client, auth("agent"), "t1", 5)
        await alerts_round(app)
        await sender_round(app)
        (req,) = receiver.requests
        message = json.loads(req.body)
        assert "Spend is high" in message["text"]
        assert "FIRING" in message["text"]
        assert message["blocks"][0]["type"] == "section"
        assert "x-dashboard-signature" not in req.headers


async def test_ssrf_refused_at_delivery(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth
) -> None:
    """A URL accepted when saved is checked again when sent: no request leaves."""
    async with running_receiver() as receiver:
        await put_channel(client, auth, "hook", type="webhook", url=receiver.url)
        await put_rule(client, auth, "spend", threshold=1, channels=["hook"])
        ctx = app.state.ctx
        ctx.settings = ctx.settings.model_copy(update={"alerts_allow_private_urls": False})
        await register(client, auth("agent"), "t1")
        await set_cost(client, auth("agent"), "t1", 5)
        (alert,) = await alerts_round(app)
        await sender_round(app)
        (attempt,) = await attempts(client, auth, alert["alert_id"])
        assert attempt["error"].startswith("refused: ")
        assert attempt["delivery_state"] == "failed"
        assert receiver.requests == []
