"""Each rule kind of docs/api.md §15 measures what it says, and holds past its threshold."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI

from dashboard_api.db.models import Agent, IndexJob, OAuthInstallation, Task, WebhookEvent
from dashboard_api.ids import new_id
from dashboard_api.services import webhooks
from dashboard_api.services.webhooks import SIGNATURE_REJECTIONS
from tests.guards.helpers import alerts_round, budgets_round, put_budget, register, set_cost

Auth = Callable[[str], dict[str, str]]


async def _rule(
    client: httpx.AsyncClient, auth: Auth, rule_id: str, kind: str, threshold: float, **extra: Any
) -> None:
    body = {"name": rule_id, "kind": kind, "threshold": threshold, **extra}
    r = await client.put(f"/api/alerts/rules/{rule_id}", json=body, headers=auth("admin"))
    assert r.status_code == 200, r.text


async def _firing(app: FastAPI) -> dict[str, dict[str, Any]]:
    return {a["rule_id"]: a for a in await alerts_round(app) if a["state"] == "firing"}


async def test_failure_rate_needs_five_ended_tasks(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth
) -> None:
    agent = auth("agent")
    await _rule(client, auth, "fr", "failure_rate", 0.3, scope={"agent_type": "coder"})
    for i, status in enumerate(["failed", "failed", "completed", "completed"]):
        await register(client, agent, f"t{i}", status="running")
        r = await client.patch(f"/api/tasks/t{i}", json={"status": status}, headers=agent)
        assert r.status_code == 200
    await register(client, agent, "other", agent_type="reviewer", status="running")
    await client.patch("/api/tasks/other", json={"status": "completed"}, headers=agent)
    assert await _firing(app) == {}  # 4 ended in scope: not enough
    await register(client, agent, "t9", status="running")
    await client.patch("/api/tasks/t9", json={"status": "cancelled"}, headers=agent)
    fired = await _firing(app)
    assert fired["fr"]["value"] == 2 / 5
    assert "2 of 5 ended tasks failed" in fired["fr"]["summary"]


async def test_duration_p95_and_cost(app: FastAPI, client: httpx.AsyncClient, auth: Auth) -> None:
    agent = auth("agent")
    await _rule(client, auth, "p95", "duration_p95_seconds", 0, scope={"source": "api"})
    await _rule(client, auth, "p95-github", "duration_p95_seconds", 0, scope={"source": "github"})
    await _rule(
        client, auth, "cost", "cost_usd", 1.5, scope={"agent_type": "coder", "source": "api"}
    )
    await register(client, agent, "t1", status="running")
    await client.patch(
        "/api/tasks/t1", json={"status": "completed", "cost_usd": 1.5}, headers=agent
    )
    fired = await _firing(app)
    assert set(fired) == {"p95", "cost"}
    assert fired["p95"]["value"] > 0
    assert fired["cost"]["value"] == 1.5


async def test_event_counts(app: FastAPI, client: httpx.AsyncClient, auth: Auth) -> None:
    ctx = app.state.ctx
    now = ctx.clock.now()
    await _rule(client, auth, "sig", "webhook_signature_failures", 2, scope={"source": "github"})
    await _rule(client, auth, "jobs", "index_job_failed", 1, window_minutes=30)
    await _rule(client, auth, "oauth", "oauth_expiring", 7)
    await _rule(client, auth, "offline", "agent_offline", 1)
    async with ctx.db.write() as session:
        for i, (source, error) in enumerate(
            [
                ("github", SIGNATURE_REJECTIONS[-1]),
                ("github", SIGNATURE_REJECTIONS[0]),
                ("github", "The github webhook is disabled."),
                ("jira", SIGNATURE_REJECTIONS[-1]),
            ]
        ):
            session.add(
                WebhookEvent(
                    event_id=new_id(),
                    source=source,
                    event_type="push",
                    delivery_id=f"d{i}",
                    status="failed",
                    error=error,
                    received_at=now,
                    payload_bytes=0,
                )
            )
        session.add(
            IndexJob(
                job_id=new_id(),
                source_id="s",
                status="failed",
                progress=0.5,
                created_at=now - timedelta(hours=2),
                finished_at=now - timedelta(minutes=40),
                updated_at=now,
            )
        )
        session.add(
            IndexJob(
                job_id=new_id(),
                source_id="s2",
                status="failed",
                progress=0.5,
                created_at=now,
                finished_at=now,
                updated_at=now,
            )
        )
        session.add(
            OAuthInstallation(
                installation_id=new_id(),
                platform="github",
                organization="acme",
                scopes=["repo", "read:org"],
                token_expires_at=now + timedelta(days=3),
                installed_at=now,
                updated_at=now,
            )
        )
        session.add(
            OAuthInstallation(
                installation_id=new_id(),
                platform="jira",
                organization="acme",
                scopes=["read:jira-work", "write:jira-work"],
                token_expires_at=now + timedelta(days=30),
                installed_at=now,
                updated_at=now,
            )
        )
        session.add(
            Agent(
                name="ghost",
                capabilities=[],
                reported_status="busy",
                announced_status="busy",
                registered_at=now,
                updated_at=now,
                last_heartbeat_at=now - timedelta(hours=1),
            )
        )
    fired = await _firing(app)
    assert fired["sig"]["value"] == 2  # not the disabled one, not jira's
    assert fired["jobs"]["value"] == 1  # not the one that failed 40 minutes ago
    assert fired["oauth"]["value"] == 1  # jira's expires in 30 days with every scope
    assert "offline" not in fired  # ghost has no running task yet
    await register(client, auth("agent"), "g1")
    r = await client.post(
        "/api/tasks/claim", json={"agent": "ghost", "agent_type": "coder"}, headers=auth("agent")
    )
    assert r.status_code == 200
    fired = await _firing(app)
    assert fired["offline"]["value"] == 1


async def test_budget_kind(app: FastAPI, client: httpx.AsyncClient, auth: Auth) -> None:
    await _rule(client, auth, "b", "budget", 1, scope={"agent_type": "coder"})
    await put_budget(client, auth("admin"), "coder", limit_usd=1, scope={"agent_type": "coder"})
    await put_budget(client, auth("admin"), "fleet", limit_usd=1)
    await register(client, auth("agent"), "t1", agent_type="reviewer")
    await set_cost(client, auth("agent"), "t1", 5)
    await budgets_round(app)  # states move; the budget rules are evaluated at once
    assert await _firing(app) == {}  # only the fleet budget is exceeded: out of scope
    await register(client, auth("agent"), "t2")
    await set_cost(client, auth("agent"), "t2", 0.9)
    await budgets_round(app)
    r = await client.get("/api/alerts", params={"state": "firing"}, headers=auth("user"))
    (alert,) = r.json()["items"]
    assert alert["rule_id"] == "b"
    assert alert["value"] == 1
    assert "coder" in alert["summary"]


def test_signature_rejections_list_every_rejection() -> None:
    """The rule counts failed events whose error is one of these: every SignatureRejected
    raised in services/webhooks.py must be listed."""
    tree = ast.parse(inspect.getsource(webhooks))
    raised = {
        node.exc.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise)
        and isinstance(node.exc, ast.Call)
        and getattr(node.exc.func, "id", None) == "SignatureRejected"
        and node.exc.args
        and isinstance(node.exc.args[0], ast.Constant)
    }
    assert raised
    assert raised == set(SIGNATURE_REJECTIONS)


async def test_lease_expired(app: FastAPI, client: httpx.AsyncClient, auth: Auth) -> None:
    """Counts tasks failed by lease expiry in the window (docs/api.md §13's `failure_reason`);
    on a version without leases the kind is refused with the reason."""
    body = {"name": "l", "kind": "lease_expired", "threshold": 1, "window_minutes": 10}
    r = await client.put("/api/alerts/rules/l", json=body, headers=auth("admin"))
    if not hasattr(Task, "failure_reason"):
        assert r.status_code == 422
        assert "leases" in r.json()["detail"]
        return
    assert r.status_code == 200, r.text
    ctx = app.state.ctx
    now = ctx.clock.now()
    async with ctx.db.write() as session:
        for i, (reason, ended) in enumerate(
            [("lease_expired", now), ("lease_expired", now - timedelta(minutes=30)), ("agent", now)]
        ):
            session.add(
                Task(task_id=f"l{i}", status="failed", agent_type="coder", source="api",
                     input_message="x", created_at=now - timedelta(hours=3), updated_at=ended,
                     started_at=now - timedelta(hours=3), completed_at=ended, failure_reason=reason,
                     metadata_={})
            )  # fmt: skip
    fired = await _firing(app)
    assert fired["l"]["value"] == 1
