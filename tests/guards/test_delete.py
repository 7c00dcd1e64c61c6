"""Deleting alert rules and channels (beyond docs/api.md §15): a deleted rule's open alert
resolves and notifies once, history stays; a channel a rule lists is 409, a deleted
channel's recorded deliveries stay and a pending one fails with the reason recorded."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from fastapi import FastAPI

from dashboard_api.services.alerts import evaluate
from dashboard_api.services.alerts.reads import read_round
from dashboard_api.services.analytics.fold import fold_pending
from tests.guards.helpers import (
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

Auth = Callable[[str], dict[str, str]]


async def test_deleting_a_rule_resolves_its_alert_once_and_keeps_history(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth
) -> None:
    async with running_receiver() as receiver:
        r = await put_channel(client, auth, "hook", type="webhook", url=receiver.url)
        assert r.status_code == 200, r.text
        await put_rule(client, auth, "spend", threshold=1, channels=["hook"])
        await put_rule(client, auth, "quiet", threshold=1e9)
        await register(client, auth("agent"), "t1")
        await set_cost(client, auth("agent"), "t1", 5)
        (fired,) = await alerts_round(app)
        admin = auth("admin")
        assert (
            await client.delete("/api/alerts/rules/spend", headers=auth("user"))
        ).status_code == 403
        r = await client.delete("/api/alerts/rules/spend", headers=admin)
        assert r.status_code == 204, r.text
        assert (await client.delete("/api/alerts/rules/spend", headers=admin)).status_code == 404
        assert (await client.delete("/api/alerts/rules/quiet", headers=admin)).status_code == 204
        r = await client.get("/api/alerts/rules", headers=auth("user"))
        assert r.json()["items"] == []
        (alert,) = await alerts(client, auth)
        assert alert["alert_id"] == fired["alert_id"]
        assert alert["state"] == "resolved"
        assert alert["summary"] == "resolved: the rule was deleted"
        # Rounds after it change nothing: the rule is gone, its alert stays resolved.
        assert await alerts_round(app) == []
        while await sender_round(app):
            pass
        sent = [
            (json.loads(q.body)["alert_id"], json.loads(q.body)["state"]) for q in receiver.requests
        ]
        assert sent == [(fired["alert_id"], "firing"), (fired["alert_id"], "resolved")]
        tries = await attempts(client, auth, fired["alert_id"])
        assert [t["event"] for t in tries] == ["firing", "resolved"]
        assert {t["delivery_state"] for t in tries} == {"delivered"}


async def test_a_deleted_rule_opens_no_alert(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth
) -> None:
    """A round that read a rule before it was deleted opens no alert for it: the opening
    insert needs the rule's row."""
    await put_rule(client, auth, "spend", threshold=1)
    await register(client, auth("agent"), "t1")
    await set_cost(client, auth("agent"), "t1", 5)
    ctx = app.state.ctx
    now = ctx.clock.now()
    await fold_pending(ctx.db)
    async with ctx.db.read_statements() as session:
        rows, _ = await evaluate._rules_and_alerts(session, None)
        reads = await read_round(
            session, [rule for rule, _ in rows], now=now, settings=ctx.settings
        )
    (opening,) = evaluate._transitions(rows, reads, ctx.settings)
    assert opening.rule.rule_id == "spend"
    assert opening.open_alert is None
    r = await client.delete("/api/alerts/rules/spend", headers=auth("admin"))
    assert r.status_code == 204
    async with ctx.db.write() as session:
        assert await evaluate._open(session, opening, now, ctx.settings) is None
    assert await alerts(client, auth) == []


async def test_deleting_a_channel(app: FastAPI, client: httpx.AsyncClient, auth: Auth) -> None:
    admin = auth("admin")
    async with running_receiver() as receiver:
        for channel in ("hook", "spare"):
            r = await put_channel(client, auth, channel, type="webhook", url=receiver.url)
            assert r.status_code == 200, r.text
        await put_rule(client, auth, "spend", threshold=1, channels=["hook", "spare"])
        r = await client.delete("/api/alerts/channels/hook", headers=admin)
        assert r.status_code == 409, r.text
        assert "'spend'" in r.json()["detail"]
        assert (await client.delete("/api/alerts/channels/nope", headers=admin)).status_code == 404
        assert (
            await client.delete("/api/alerts/channels/hook", headers=auth("user"))
        ).status_code == 403
        # An alert notifies both channels; "hook" is delivered before it goes, "spare"'s
        # delivery is still pending when the channel is deleted.
        await register(client, auth("agent"), "t1")
        await set_cost(client, auth("agent"), "t1", 5)
        (fired,) = await alerts_round(app)
        await put_rule(client, auth, "spend", threshold=1, channels=["hook"])
        r = await client.delete("/api/alerts/channels/spare", headers=admin)
        assert r.status_code == 204, r.text
        while await sender_round(app):
            pass
        r = await client.get("/api/alerts/channels", headers=admin)
        assert [c["channel_id"] for c in r.json()["items"]] == ["hook"]
        tries = {t["channel_id"]: t for t in await attempts(client, auth, fired["alert_id"])}
        assert tries["hook"]["delivery_state"] == "delivered"
        assert tries["spare"]["delivery_state"] == "failed"
        assert tries["spare"]["error"] == "the channel no longer exists"
        assert len(receiver.requests) == 1
