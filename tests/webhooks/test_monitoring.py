"""Webhook configs, recorded events, listing filters, statistics and secret hygiene."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from dashboard_api.services.secrets_box import seal, unseal
from dashboard_api.services.webhooks import SignatureRejected, verify_delivery
from dashboard_api.timeutil import format_ts
from tests.support.webhooks import (
    SECRETS,
    dumps,
    github_headers,
    hex_hmac,
    jira_headers,
    slack_headers,
)

Auth = Callable[[str], dict[str, str]]


async def test_configs_always_list_all_three(client: httpx.AsyncClient, auth: Auth) -> None:
    r = await client.get("/api/webhooks", headers=auth("user"))
    assert r.status_code == 200
    items = r.json()["items"]
    assert [i["source"] for i in items] == ["github", "jira", "slack"]
    for item in items:
        assert item == {
            "source": item["source"],
            "enabled": True,
            "configured": False,
            "receive_path": f"/api/webhooks/{item['source']}/receive",
            "last_received_at": None,
            "events_24h": 0,
            "success_rate_24h": None,
        }
    assert (await client.get("/api/webhooks")).status_code == 401


async def test_put_config_roles_and_unset(client: httpx.AsyncClient, auth: Auth) -> None:
    for role in ("user", "agent"):
        r = await client.put("/api/webhooks/github", json={"secret": "s"}, headers=auth(role))
        assert r.status_code == 403
    r = await client.put("/api/webhooks/gitlab", json={"secret": "s"}, headers=auth("admin"))
    assert r.status_code == 404
    r = await client.put("/api/webhooks/github", json={"secret": ""}, headers=auth("admin"))
    assert r.status_code == 422
    r = await client.put("/api/webhooks/github", json={"other": 1}, headers=auth("admin"))
    assert r.status_code == 422

    r = await client.put("/api/webhooks/github", json={"secret": "abc"}, headers=auth("admin"))
    assert r.status_code == 200
    assert r.json()["configured"] is True
    assert r.json()["enabled"] is True
    r = await client.put("/api/webhooks/github", json={"enabled": False}, headers=auth("admin"))
    assert (r.json()["configured"], r.json()["enabled"]) == (True, False)
    r = await client.put("/api/webhooks/github", json={"secret": None}, headers=auth("admin"))
    assert (r.json()["configured"], r.json()["enabled"]) == (False, False)
    r = await client.put("/api/webhooks/github", json={}, headers=auth("admin"))
    assert (r.json()["configured"], r.json()["enabled"]) == (False, False)


async def test_recorded_events_filters_and_paging(client: httpx.AsyncClient, auth: Auth) -> None:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    bodies: list[dict[str, Any]] = [
        {"source": "github", "event_type": "push", "status": "success", "delivery_id": "a"},
        {"source": "github", "event_type": "issues.opened", "status": "failed", "error": "boom"},
        {"source": "jira", "event_type": "jira:issue_created", "status": "success"},
        {"source": "slack", "event_type": "app_mention", "status": "success", "task_id": "t-9"},
        {"source": "slack", "event_type": "message", "status": "failed", "payload": [1, 2]},
    ]
    ids = []
    for i, body in enumerate(bodies):
        body["received_at"] = format_ts(base + timedelta(hours=i))
        r = await client.post("/api/webhooks/events", json=body, headers=auth("agent"))
        assert r.status_code == 201, r.text
        ids.append(r.json()["event_id"])
    # The same successful delivery again: 200, the event already recorded.
    r = await client.post("/api/webhooks/events", json=bodies[0], headers=auth("agent"))
    assert (r.status_code, r.json()["event_id"]) == (200, ids[0])
    assert (
        await client.post("/api/webhooks/events", json=bodies[0], headers=auth("user"))
    ).status_code == 403
    bad = {"source": "gitlab", "event_type": "x", "status": "success"}
    assert (
        await client.post("/api/webhooks/events", json=bad, headers=auth("agent"))
    ).status_code == 422

    async def ids_for(**params: Any) -> list[str]:
        r = await client.get("/api/webhooks/events", params=params, headers=auth("user"))
        assert r.status_code == 200, r.text
        return [e["event_id"] for e in r.json()["items"]]

    assert await ids_for() == ids[::-1]  # newest first
    assert await ids_for(source="github") == [ids[1], ids[0]]
    assert await ids_for(source="github,jira") == [ids[2], ids[1], ids[0]]
    assert await ids_for(status="failed") == [ids[4], ids[1]]
    assert await ids_for(event_type=["push", "message"]) == [ids[4], ids[0]]
    window = {
        "from": format_ts(base + timedelta(hours=1)),
        "to": format_ts(base + timedelta(hours=3)),
    }
    assert await ids_for(**window) == [ids[2], ids[1]]  # half-open
    for bad_params in (
        {"status": "ok"},
        {"source": "gitlab"},
        {"from": "yesterday"},
        {"cursor": "!!"},
    ):
        r = await client.get("/api/webhooks/events", params=bad_params, headers=auth("user"))
        assert r.status_code == 422, bad_params

    # A cursor walk returns every event once, in order.
    walked: list[str] = []
    params: dict[str, Any] = {"per_page": 2}
    while True:
        page = (
            await client.get("/api/webhooks/events", params=params, headers=auth("user"))
        ).json()
        walked += [e["event_id"] for e in page["items"]]
        if not page["next_cursor"]:
            break
        params = {"per_page": 2, "cursor": page["next_cursor"]}
    assert walked == ids[::-1]

    detail = (await client.get(f"/api/webhooks/events/{ids[4]}", headers=auth("user"))).json()
    assert detail["payload"] == [1, 2]
    assert detail["payload_bytes"] > 0
    assert (await client.get("/api/webhooks/events/nope", headers=auth("user"))).status_code == 404


async def test_stats_equal_counts_of_recorded_events(client: httpx.AsyncClient, auth: Auth) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    recorded = []
    for i in range(40):
        body = {
            "source": rng.choice(["github", "jira", "slack"]),
            "event_type": "e",
            "status": rng.choice(["success", "failed"]),
            "received_at": format_ts(now - timedelta(minutes=rng.randrange(0, 60 * 48))),
            "delivery_id": f"d{i}",
        }
        r = await client.post("/api/webhooks/events", json=body, headers=auth("agent"))
        assert r.status_code == 201
        recorded.append(r.json())

    def parse(ts: str) -> datetime:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))

    windows: list[dict[str, str]] = [
        {},
        {"from": format_ts(now - timedelta(hours=30)), "to": format_ts(now - timedelta(hours=3))},
        {"from": format_ts(now - timedelta(hours=60))},
    ]
    for params in windows:
        r = await client.get("/api/webhooks/stats", params=params, headers=auth("user"))
        assert r.status_code == 200, r.text
        stats = r.json()
        start, end = parse(stats["from"]), parse(stats["to"])
        if not params:
            assert end - start == timedelta(days=1)
        assert [s["source"] for s in stats["sources"]] == ["github", "jira", "slack"]
        for s in stats["sources"]:
            mine = [
                e
                for e in recorded
                if e["source"] == s["source"] and start <= parse(e["received_at"]) < end
            ]
            ok = [e for e in mine if e["status"] == "success"]
            bad = [e for e in mine if e["status"] == "failed"]
            assert (s["total"], s["succeeded"], s["failed"]) == (len(mine), len(ok), len(bad))
            assert s["success_rate"] == (len(ok) / len(mine) if mine else None)
            assert s["last_received_at"] == max((e["received_at"] for e in mine), default=None)
            assert s["last_success_at"] == max((e["received_at"] for e in ok), default=None)
            assert s["last_failure_at"] == max((e["received_at"] for e in bad), default=None)

    configs = (await client.get("/api/webhooks", headers=auth("user"))).json()["items"]
    day = [e for e in recorded if parse(e["received_at"]) >= now - timedelta(days=1)]
    for c in configs:
        mine = [e for e in day if e["source"] == c["source"]]
        ok = sum(e["status"] == "success" for e in mine)
        assert c["events_24h"] == len(mine)
        assert c["success_rate_24h"] == (ok / len(mine) if mine else None)
        everything = [e["received_at"] for e in recorded if e["source"] == c["source"]]
        assert c["last_received_at"] == max(everything, default=None)

    r = await client.get(
        "/api/webhooks/stats",
        params={"from": format_ts(now), "to": format_ts(now - timedelta(hours=1))},
        headers=auth("user"),
    )
    assert r.status_code == 422


async def test_secrets_never_leave_the_service(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)  # SQL, parameters and rows
    try:
        answers = []
        for source in ("github", "jira", "slack"):
            r = await client.put(
                f"/api/webhooks/{source}", json={"secret": SECRETS[source]}, headers=auth("admin")
            )
            answers.append(r)
        body = dumps({"action": "opened", "issue": {"title": "t"}})
        answers.append(
            await client.post(
                "/api/webhooks/github/receive",
                content=body,
                headers=github_headers(SECRETS["github"], body),
            )
        )
        answers.append(
            await client.post(
                "/api/webhooks/jira/receive",
                content=body,
                headers=jira_headers("wrong", body),
            )
        )
        now = int(time.time())
        answers.append(
            await client.post(
                "/api/webhooks/slack/receive",
                content=body,
                headers=slack_headers(SECRETS["slack"], body, timestamp=now - 999),
            )
        )
        answers.append(await client.get("/api/webhooks", headers=auth("user")))
        answers.append(await client.get("/api/webhooks/events", headers=auth("user")))
        for e in answers[-1].json()["items"]:
            answers.append(
                await client.get(f"/api/webhooks/events/{e['event_id']}", headers=auth("user"))
            )
        answers.append(await client.get("/api/webhooks/stats", headers=auth("user")))
        answers.append(
            await client.put("/api/webhooks/github", json={"secret": None}, headers=auth("admin"))
        )
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.NOTSET)
    assert [a.status_code for a in answers[:4]] == [200, 200, 200, 200]
    async with app.state.ctx.db.read() as session:
        stored = (await session.execute(text("SELECT secret FROM webhook_configs"))).scalars().all()
    assert len(stored) == 3
    assert all(v is None or v.startswith("v1:") for v in stored)
    assert "UPDATE webhook_configs" in caplog.text or "INSERT INTO webhook_configs" in caplog.text
    for secret in SECRETS.values():
        assert secret not in caplog.text
        for a in answers:
            assert secret not in a.text


# --- the verification function itself -----------------------------------------------------

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@given(
    source=st.sampled_from(["github", "jira", "slack"]),
    secret=st.text(min_size=1, max_size=40),
    extra=st.dictionaries(st.text(max_size=8), st.integers(), max_size=4),
    flip=st.integers(min_value=0, max_value=10_000),
)
def test_signature_accepts_exactly_the_signed_body(
    source: str, secret: str, extra: dict[str, int], flip: int
) -> None:
    body = dumps({"webhookEvent": "x", "extra": extra})
    stamp = int(NOW.timestamp())
    if source == "github":
        headers = {
            "x-hub-signature-256": "sha256=" + hex_hmac(secret, body),
            "x-github-event": "push",
            "x-github-delivery": "d",
        }
    elif source == "jira":
        headers = {"x-hub-signature": "sha256=" + hex_hmac(secret, body)}
    else:
        headers = {
            "x-slack-signature": "v0=" + hex_hmac(secret, f"v0:{stamp}:".encode() + body),
            "x-slack-request-timestamp": str(stamp),
        }
    verified = verify_delivery(
        source, secret=secret, headers=headers, body=body, now=NOW, slack_tolerance_seconds=300
    )
    assert verified.payload["extra"] == extra

    tampered = bytearray(body)
    tampered[flip % len(body)] ^= 0x01
    with pytest.raises(SignatureRejected):
        verify_delivery(
            source,
            secret=secret,
            headers=headers,
            body=bytes(tampered),
            now=NOW,
            slack_tolerance_seconds=300,
        )
    with pytest.raises(SignatureRejected):
        verify_delivery(
            source,
            secret=secret + "x",
            headers=headers,
            body=body,
            now=NOW,
            slack_tolerance_seconds=300,
        )


@pytest.mark.parametrize(("delta", "ok"), [(300, True), (-300, True), (301, False), (-301, False)])
def test_slack_tolerance_boundary(delta: int, ok: bool) -> None:
    body = b"{}"
    sent = int(NOW.timestamp()) + delta
    headers = {
        "x-slack-signature": "v0=" + hex_hmac("s", f"v0:{sent}:".encode() + body),
        "x-slack-request-timestamp": str(sent),
    }

    def check() -> None:
        verify_delivery(
            "slack", secret="s", headers=headers, body=body, now=NOW, slack_tolerance_seconds=300
        )

    if ok:
        check()
    else:
        with pytest.raises(SignatureRejected):
            check()


@given(secret=st.text(min_size=1, max_size=200))
def test_sealing_round_trips_and_needs_the_key(secret: str) -> None:
    sealed = seal(secret, b"key-1")
    if len(secret) >= 12:  # (a short one can occur in base64 text by chance)
        assert secret not in sealed
    assert unseal(sealed, b"key-1") == secret
    assert unseal(sealed, b"key-2") is None
    i = 8  # inside the nonce: any change must break the tag
    tampered = sealed[:i] + ("A" if sealed[i] != "A" else "B") + sealed[i + 1 :]
    assert unseal(tampered, b"key-1") is None
