"""Analytics equal brute force after a short concurrent mixed load (the soak's check, bounded).

Producers register tasks of random agent types, sources and models, stream output, report
tokens and costs and end them every way there is (completed, failed, cancelled by the
producer or by a user, left running) — concurrently, while readers query analytics.
Then every summary, histogram bucket and performance figure of several windows (whole
span, filtered, cut mid-load, odd time zones) must equal brute force over the raw rows.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI

from tests.analytics import brute
from tests.hardening.analytics_audit import Window, compare
from tests.support.env import Backend
from tests.support.figures import FIGURE_LINES

Auth = Callable[[str], dict[str, str]]

AGENTS = ("coder", "reviewer", "triage")
SOURCES = ("github", "jira", "api")
MODELS = (None, "claude-sonnet-4", "gpt-5", "no-such-model")
PRODUCERS = 5
TASKS_PER_PRODUCER = 4


async def _producer(client: httpx.AsyncClient, auth: Auth, n: int, counts: dict[str, int]) -> None:
    rng = random.Random(n)  # the same operations every run; only the interleaving varies
    agent, user = auth("agent"), auth("user")
    for k in range(TASKS_PER_PRODUCER):
        task_id = f"load-{n}-{k}"
        body: dict[str, Any] = {
            "task_id": task_id,
            "agent_type": rng.choice(AGENTS),
            "source": rng.choice(SOURCES),
            "input_message": "work",
            "status": rng.choice(("queued", "running", "running")),
        }
        model = rng.choice(MODELS)
        if model is not None:
            body["model"] = model
        r = await client.post("/api/tasks", json=body, headers=agent)
        assert r.status_code == 201, r.text
        if body["status"] == "queued" and rng.random() < 0.7:
            r = await client.patch(
                f"/api/tasks/{task_id}", json={"status": "running"}, headers=agent
            )
            assert r.status_code == 200, r.text
        for i in range(rng.randint(0, 3)):
            r = await client.post(
                f"/api/tasks/{task_id}/output", json={"content": f"{i}\n"}, headers=agent
            )
            assert r.status_code == 200, r.text
        tokens = {
            "input_tokens": rng.randint(0, 200_000),
            "output_tokens": rng.randint(0, 50_000),
            "cache_read_tokens": rng.randint(0, 10_000),
        }
        r = await client.patch(f"/api/tasks/{task_id}", json=tokens, headers=agent)
        assert r.status_code == 200, r.text
        if rng.random() < 0.3:
            cost = {"cost_usd": rng.choice((0.1, 0.123456, 2.5, 0.0))}
            r = await client.patch(f"/api/tasks/{task_id}", json=cost, headers=agent)
            assert r.status_code == 200, r.text
        end = rng.choice(("completed", "completed", "failed", "cancelled", "user-cancel", None))
        if end == "user-cancel":
            r = await client.post(f"/api/tasks/{task_id}/cancel", headers=user)
            assert r.status_code == 200, r.text
        elif end is not None:
            r = await client.patch(f"/api/tasks/{task_id}", json={"status": end}, headers=agent)
            assert r.status_code in (200, 409), r.text  # 409: a queued task cannot complete
        counts["writes"] += 1


async def _reader(client: httpx.AsyncClient, auth: Auth, done: asyncio.Event) -> int:
    paths = ("/api/analytics/summary", "/api/analytics/performance",
             "/api/analytics/costs/histogram?period=hour")  # fmt: skip
    reads = 0
    while not done.is_set():
        r = await client.get(paths[reads % len(paths)], headers=auth("user"))
        assert r.status_code == 200, r.text
        reads += 1
        await asyncio.sleep(0.05)  # pace: readers are company for the writers, not a flood
    return reads


async def test_analytics_equal_brute_force_after_concurrent_mixed_load(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth, backend: Backend
) -> None:
    started = datetime.now(UTC)
    counts = {"writes": 0}
    done = asyncio.Event()
    readers = [asyncio.create_task(_reader(client, auth, done)) for _ in range(2)]
    await asyncio.gather(*(_producer(client, auth, n, counts) for n in range(PRODUCERS)))
    done.set()
    reads = sum(await asyncio.gather(*readers))
    assert counts["writes"] == PRODUCERS * TASKS_PER_PRODUCER
    assert reads > 0

    raw = await brute.load_tasks(app)
    assert len(raw) == PRODUCERS * TASKS_PER_PRODUCER
    first = min(t.created_at for t in raw)
    last = max(t.created_at for t in raw)
    middle = first + (last - first) / 2
    whole = (started - timedelta(hours=2), datetime.now(UTC) + timedelta(hours=2))
    windows = [
        Window(*whole),
        Window(*whole, tz="Asia/Kathmandu", period="day"),
        Window(*whole, agent_type=("coder",), source=("github", "api"), tz="Asia/Kolkata"),
        Window(middle, whole[1], agent_type=("reviewer", "triage")),  # cut in mid-load
        Window(first, middle + timedelta(microseconds=1), tz="America/New_York"),
    ]
    audit = await compare(client, auth("user"), raw, windows)
    assert not audit.problems, "\n".join(audit.problems[:30])
    assert audit.figures > 200
    FIGURE_LINES.append(
        f"analytics under load [{backend.name}]: {len(raw)} tasks, {reads} concurrent reads,"
        f" {audit.figures} figures in {len(windows)} windows equal brute force"
    )
