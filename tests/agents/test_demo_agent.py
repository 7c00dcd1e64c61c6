"""The simulated agent over the REST API (what `dashboard-api demo-agent` runs)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI

from dashboard_api.demo.simulator import HttpBackend, SimulatedAgent


def _agent_client(app: FastAPI, headers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
    )


async def _wait_status(
    client: httpx.AsyncClient, task_id: str, statuses: set[str]
) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            task = (await client.get(f"/api/tasks/{task_id}")).json()
            if task["status"] in statuses:
                return dict(task)
            await asyncio.sleep(0.05)


async def test_claims_streams_and_completes(
    app: FastAPI, client: httpx.AsyncClient, auth: Callable[[str], dict[str, str]]
) -> None:
    r = await client.post(
        "/api/tasks",
        json={"task_id": "d-1", "agent_type": "reviewer", "input_message": "Review #1"},
        headers=auth("agent"),
    )
    assert r.status_code == 201
    async with _agent_client(app, auth("agent")) as http:
        agent = SimulatedAgent(
            HttpBackend(http), name="reviewer", agent_types=["reviewer"], pace=0, seed=1,
            idle_poll=0.05, failure_rate=0,
        )  # fmt: skip
        runner = asyncio.create_task(agent.run())
        try:
            task = await _wait_status(http, "d-1", {"completed", "failed"})
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    assert task["status"] == "completed"
    assert task["assigned_agent"] == "reviewer"
    assert task["output_seq"] > 3
    assert task["output_tokens"] > 0
    assert task["cost_usd"] > 0
    assert task["result"]
    agents = (await client.get("/api/agents", headers=auth("user"))).json()["items"]
    reviewer = next(a for a in agents if a["name"] == "reviewer")
    assert reviewer["registered"] is True
    assert reviewer["last_heartbeat_at"] is not None
    assert "reviewer" in reviewer["capabilities"]


async def test_honours_cancel_requests(
    app: FastAPI, client: httpx.AsyncClient, auth: Callable[[str], dict[str, str]]
) -> None:
    r = await client.post(
        "/api/tasks",
        json={"task_id": "d-2", "agent_type": "triage", "input_message": "Triage #2"},
        headers=auth("agent"),
    )
    assert r.status_code == 201
    async with _agent_client(app, auth("agent")) as http:
        agent = SimulatedAgent(
            HttpBackend(http), name="triage", agent_types=["triage"], pace=0.2, seed=2,
            idle_poll=0.05, failure_rate=0,
        )  # fmt: skip
        runner = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(30):
                while (await http.get("/api/tasks/d-2")).json()["output_seq"] == 0:
                    await asyncio.sleep(0.02)
            r = await client.post("/api/tasks/d-2/cancel", headers=auth("user"))
            assert r.status_code == 200
            assert r.json()["cancel_requested"] is True
            task = await _wait_status(http, "d-2", {"cancelled", "completed", "failed"})
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    assert task["status"] == "cancelled"
    log = (await client.get("/api/tasks/d-2/logs/full", headers=auth("user"))).json()
    assert "Cancel requested" in log["output"]


def test_cli_needs_a_token() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "dashboard_api", "demo-agent", "--agent-type", "x"],
        env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert b"token" in r.stderr
