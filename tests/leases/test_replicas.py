"""The lease reaper across replicas: it runs on one of them only (the others' reaper job
stays idle) and moves to another when that one stops; and a demo agent SIGKILLed in the
middle of a task on a real server leaves the task failed by its lease within the bound."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from dashboard_api.app import create_app
from tests.leases.helpers import metric
from tests.support.clock import FakeClock
from tests.support.env import Backend
from tests.support.replicas import pg, replica_process, replica_tokens  # noqa: F401 (fixture)
from tests.support.tokens import make_token


@asynccontextmanager
async def replica(
    backend: Backend, clock: FakeClock
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(
        backend.settings(agent_sweep_interval_seconds=0, lease_reap_interval_seconds=0.05),
        clock=clock,
    )
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield app, client


async def test_the_reaper_runs_on_one_replica_and_moves_when_it_stops(backend: Backend) -> None:
    clock = FakeClock()
    async with AsyncExitStack() as a_stack, AsyncExitStack() as b_stack:
        stacks = {"a": a_stack, "b": b_stack}
        replicas = {
            "a": await a_stack.enter_async_context(replica(backend, clock)),
            "b": await b_stack.enter_async_context(replica(backend, clock)),
        }
        first_app = replicas["a"][0]
        agent = {
            "Authorization": f"Bearer {await make_token(first_app, role='agent', user_id='ag')}"
        }
        user = {"Authorization": f"Bearer {await make_token(first_app, role='user', user_id='u')}"}

        async def leased_tasks(prefix: str, n: int, via: list[str]) -> None:
            for i in range(n):
                body = {"task_id": f"{prefix}-{i}", "agent_type": "coder", "input_message": "x",
                        "status": "running", "lease_seconds": 10}  # fmt: skip
                client = replicas[via[i % len(via)]][1]
                assert (
                    await client.post("/api/tasks", json=body, headers=agent)
                ).status_code == 201

        async def wait_failed(client: httpx.AsyncClient, total: int) -> None:
            async with asyncio.timeout(20):
                while True:
                    params: dict[str, Any] = {"failure_reason": "lease_expired", "per_page": 200}
                    r = await client.get("/api/tasks", params=params, headers=user)
                    if r.json()["total"] == total:
                        return
                    await asyncio.sleep(0.05)

        await leased_tasks("one", 20, ["a", "b"])
        clock.advance(11)
        await wait_failed(replicas["a"][1], 20)
        for i in range(20):  # failed once each, whichever replica did it
            r = await replicas["a"][1].get(f"/api/tasks/one-{i}/logs/full", headers=user)
            assert [e["status"] for e in r.json()["events"]] == ["running", "failed"]
        stats = {
            name: app.state.ctx.jobs.stats["lease-reaper"] for name, (app, _) in replicas.items()
        }
        leaders = [name for name, s in stats.items() if s.leader]
        assert len(leaders) == 1, stats
        leader = leaders[0]
        idle = "b" if leader == "a" else "a"
        assert stats[idle].runs == 0
        texts = {
            name: (await client.get("/metrics")).text for name, (_, client) in replicas.items()
        }
        assert metric(texts[leader], "dashboard_leases_expired_total", agent_type="coder") == 20
        assert metric(texts[idle], "dashboard_leases_expired_total", agent_type="coder") == 0

        await stacks[leader].aclose()  # the leader stops; the other takes the reaper over
        await leased_tasks("two", 5, [idle])
        clock.advance(11)
        await wait_failed(replicas[idle][1], 25)
        assert replicas[idle][0].state.ctx.jobs.stats["lease-reaper"].leader


@pytest.mark.slow
async def test_a_sigkilled_demo_agent_leaves_its_task_failed_by_lease_in_time(pg: str) -> None:  # noqa: F811
    """A real server (uvicorn, PostgreSQL + Redis) and `dashboard-api demo-agent` with a
    10 s lease; the agent is SIGKILLed after its first output line. The task must end
    failed by its lease no later than lease + 10 s after the kill (the agent's last
    renewal was before it)."""
    from tests.support.env import REDIS_URL

    lease = 10
    prefix = f"dashtest:{os.urandom(6).hex()}:"
    env = {
        "DASHBOARD_DATABASE_URL": pg,
        "DASHBOARD_REDIS_URL": REDIS_URL,
        "DASHBOARD_REDIS_PREFIX": prefix,
        "DASHBOARD_REDIS_INGRESS_PREFIX": prefix,
        "DASHBOARD_TOKEN_CACHE_SECONDS": "0",
    }
    tokens = await replica_tokens(pg)
    async with (
        replica_process(env) as (url, _),
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        agent = {"Authorization": f"Bearer {tokens['agent']}"}
        r = await http.post(
            "/api/tasks",
            json={"task_id": "doomed", "agent_type": "doomed-type", "input_message": "work"},
            headers=agent,
        )
        assert r.status_code == 201
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dashboard_api", "demo-agent", "--agent-type", "doomed-type",
            "--url", url, "--token", tokens["agent"], "--lease-seconds", str(lease),
            "--pace", "2",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with asyncio.timeout(60):
                while True:
                    task = (await http.get("/api/tasks/doomed", headers=agent)).json()
                    if task["status"] == "running" and task["output_seq"] >= 1:
                        break
                    await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            killed_at = datetime.now(UTC)
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert task["assigned_agent"] == "doomed-type"
        async with asyncio.timeout(lease + 30):
            while True:
                task = (await http.get("/api/tasks/doomed", headers=agent)).json()
                if task["status"] != "running":
                    break
                await asyncio.sleep(0.2)
    assert (task["status"], task["failure_reason"], task["error"]) == (
        "failed",
        "lease_expired",
        "lease expired",
    )
    failed_at = datetime.fromisoformat(task["completed_at"].replace("Z", "+00:00"))
    assert (failed_at - killed_at).total_seconds() <= lease + 10, (killed_at, failed_at)
