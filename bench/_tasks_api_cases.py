"""What bench.tasks_api times and how a figure is recorded: the list cases with the naive
SQL each is compared with, the targets, the Result row, and the throughput measurements
(batched output appends; the first page from 32 connections beside /api/health's)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench._common import KeepAliveClient, pct

LIST_TARGET_MS = 10.0
# The framework's floor: what a request costs the service without the database, timed
# on the same connections in the same run; "x floor" columns are multiples of its p50.
FLOOR = "floor: GET /api/health"
# Needles the seed's messages hold about as often as the q cases' (`acme/<repo>`: ~146,000
# matches each, like `payments`; `flaky job #1x`: ~1,400 each): each is new to a server,
# so each first request is cold. One cold sample per case is noise on a shared machine;
# these give a median.
COLD_NEEDLES = {
    "common": ("acme/web", "acme/api", "acme/infra", "acme/search", "acme/mobile"),
    "rare": tuple(f"flaky job #{n}" for n in range(13, 20)),
}
COLD_TARGETS = {"common": "<= 1.2x count(*)", "rare": "<= 60 ms"}
DEEP_TARGET_X = 20.0
APPEND_TARGET = 5000.0


@dataclass
class Result:
    name: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    n: int = 0
    rate: str = ""
    note: str = ""
    target: str = ""
    met: bool | None = None
    naive: str = ""  # the naive baseline row this one is compared with
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ListCase:
    name: str
    params: dict[str, Any]
    where: str  # the same filter in SQL; $1 and $2 are the 7-day window
    sort: str = "created_at DESC, task_id DESC"


def naive_sql(where: str, offset: int, sort: str) -> tuple[str, str]:
    page = (
        "SELECT task_id, status, agent_type, source, created_at, cost_micros FROM tasks "  # noqa: S608
        f"{where} ORDER BY {sort} LIMIT 50 OFFSET {offset}"
    )
    return page, f"SELECT count(*) FROM tasks {where}"  # noqa: S608


def list_cases(week: dict[str, str]) -> list[ListCase]:
    combined = (
        "WHERE status = 'completed' AND agent_type = 'claude-code' "
        "AND created_at >= $1 AND created_at < $2"
    )
    return [
        ListCase("list: first page", {}, ""),
        ListCase("list: status=failed", {"status": "failed"}, "WHERE status = 'failed'"),
        ListCase(
            "list: agent_type=reviewer", {"agent_type": "reviewer"}, "WHERE agent_type = 'reviewer'"
        ),
        ListCase("list: source=slack", {"source": "slack"}, "WHERE source = 'slack'"),
        ListCase("list: created 7-day range", week, "WHERE created_at >= $1 AND created_at < $2"),
        ListCase(
            "list: conversation_id",
            {"conversation_id": "bench-conv"},
            "WHERE conversation_id = 'bench-conv'",
        ),
        ListCase("list: flow_id", {"flow_id": "flow-17"}, "WHERE flow_id = 'flow-17'"),
        ListCase("list: user_id", {"user_id": "user-7"}, "WHERE user_id = 'user-7'"),
        ListCase(
            "list: status+agent_type+7 days",
            {"status": "completed", "agent_type": "claude-code", **week},
            combined,
        ),
        ListCase(
            "list: q=payments (common)", {"q": "payments"}, "WHERE input_message ILIKE '%payments%'"
        ),
        ListCase(
            "list: q='flaky job #12' (rare)",
            {"q": "flaky job #12"},
            "WHERE input_message ILIKE '%flaky job #12%'",
        ),
        ListCase(
            "list: q=payments + 7 days",
            {"q": "payments", **week},
            "WHERE input_message ILIKE '%payments%' AND created_at >= $1 AND created_at < $2",
        ),
        ListCase(
            "list: sort=-cost_usd", {"sort": "-cost_usd"}, "", "cost_micros DESC, task_id DESC"
        ),
    ]


async def append_throughput(client: httpx.AsyncClient, agent: str, prefix: str) -> Result:
    """Batched appends (1,000 chunks of 80 bytes each) to 4 tasks, 4 requests in flight."""
    ah = {"Authorization": f"Bearer {agent}"}
    tasks = []
    for i in range(4):
        r = await client.post(
            "/api/tasks",
            # Running, as an agent's task is while it streams: it holds a lease, which
            # an append renews in its own statement when less than half is left.
            json={
                "agent_type": "claude-code",
                "input_message": f"append bench {i}",
                "status": "running",
            },
            headers=ah,
        )
        r.raise_for_status()
        tasks.append(r.json()["task_id"])
    chunks = [{"content": f"{i:05d} " + "y" * 73 + "\n"} for i in range(1000)]
    per_task = 10

    async def worker(task_id: str) -> None:
        for _ in range(per_task):
            r = await client.post(
                f"/api/tasks/{task_id}/output", json={"chunks": chunks}, headers=ah
            )
            r.raise_for_status()

    start = time.perf_counter()
    await asyncio.gather(*(worker(t) for t in tasks))
    elapsed = time.perf_counter() - start
    total = 4 * per_task * len(chunks)
    return Result(
        prefix + "output appends (batched, 4 tasks in parallel)",
        rate=f"{total / elapsed:,.0f} chunks/s",
        n=4 * per_task,
        target=f">= {APPEND_TARGET:,.0f} chunks/s",
        met=total / elapsed >= APPEND_TARGET,
    )


async def page_throughput(port: int, user: str, workers: int, prefix: str) -> Result:
    """The first page from 32 keep-alive connections, each sending requests back to back,
    beside `/api/health` the same way right before and after (the floor's throughput)."""
    health_before, _ = await throughput(port, user, "/api/health")
    rate, latencies = await throughput(port, user, "/api/tasks")
    health_after, _ = await throughput(port, user, "/api/health")
    health = (health_before + health_after) / 2
    return Result(
        f"{prefix}first page, 32 connections, {workers} worker{'s' if workers > 1 else ''}",
        pct(latencies, 0.5),
        pct(latencies, 0.99),
        len(latencies),
        rate=f"{rate:,.0f} req/s",
        note=f"{rate / health:.0%} of /api/health's {health:,.0f} req/s (before and after)",
    )


async def throughput(port: int, user: str, path: str) -> tuple[float, list[float]]:
    """Requests/s of GET `path` from 32 keep-alive connections sending back to back, and
    each request's milliseconds."""
    uh = {"Authorization": f"Bearer {user}"}
    conns, per_conn = 32, 40
    latencies: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(KeepAliveClient("127.0.0.1", port, uh))
            for _ in range(conns)
        ]
        await asyncio.gather(*(c.get(path) for c in clients))

        async def worker(c: KeepAliveClient) -> None:
            for _ in range(per_conn):
                t0 = time.perf_counter()
                status, body = await c.get(path)
                if status != 200:
                    raise RuntimeError(f"{status} {body[:200]!r}")
                latencies.append((time.perf_counter() - t0) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies
