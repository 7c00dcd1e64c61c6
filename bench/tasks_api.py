"""Task API benchmark on 1,000,000 tasks in PostgreSQL, through a real uvicorn server.

Run: `.venv/bin/python -m bench.tasks_api [--requests 100] [--reseed]` (see bench/README.md).
It creates (or reuses) its own database, seeds it with `dashboard-api seed`, serves it
with uvicorn on loopback, and measures list, detail, log and append requests with httpx;
the naive query (OFFSET paging plus count(*) of the filtered rows) is timed directly on
the database in the same run as the baseline. Every `total` the API answers is checked
against count(*) of the same filter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench._common import (
    BIN,
    cli,
    connect,
    db_url,
    free_port,
    log,
    pct,
    recreate_db,
    task_count,
    timed,
)

DB_NAME = os.environ.get("DASHBOARD_BENCH_DB", "dash_bench_tasks")
DB_URL = db_url(DB_NAME)
N_TASKS = 1_000_000
DEPTH = 500_000


# --- database setup -----------------------------------------------------------------------


async def vacuum_analyze() -> float:
    """After a bulk load: visibility map (index-only scans) and planner statistics."""
    conn = await connect(DB_NAME)
    try:
        start = time.perf_counter()
        await conn.execute("VACUUM ANALYZE tasks")
        await conn.execute("VACUUM ANALYZE task_events")
        return time.perf_counter() - start
    finally:
        await conn.close()


async def rollups_consistent() -> bool | None:
    """Whether the analytics rollups (when the schema has them) count every task."""
    conn = await connect(DB_NAME)
    try:
        if not await conn.fetchval("SELECT to_regclass('analytics_rollups') IS NOT NULL"):
            return None
        grain = await conn.fetchval("SELECT max(grain) FROM analytics_rollups")
        counted = await conn.fetchval(
            "SELECT coalesce(sum(tasks), 0) FROM analytics_rollups WHERE grain = $1 AND series = 0",
            grain,
        )
        return int(counted or 0) == int(await conn.fetchval("SELECT count(*) FROM tasks"))
    finally:
        await conn.close()


async def rebuild_rollups() -> float:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from dashboard_api.services.analytics_rollups import rebuild_rollups as rebuild

    # Its own engine: a rebuild of 1M tasks outlasts the app's 60 s statement timeout.
    engine = create_async_engine(DB_URL, connect_args={"command_timeout": None})
    start = time.perf_counter()
    try:
        async with AsyncSession(engine) as session, session.begin():
            await rebuild(session)
    finally:
        await engine.dispose()
    return time.perf_counter() - start


# --- measuring ----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    n: int = 0
    rate: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def naive_sql(where: str, offset: int) -> tuple[str, str]:
    page = (
        "SELECT task_id, status, agent_type, source, created_at, cost_micros FROM tasks "  # noqa: S608
        f"{where} ORDER BY created_at DESC, task_id DESC OFFSET {offset} LIMIT 50"
    )
    return page, f"SELECT count(*) FROM tasks {where}"  # noqa: S608


async def main(args: argparse.Namespace) -> int:
    env = {**os.environ, "DASHBOARD_DATABASE_URL": DB_URL, "DASHBOARD_LOG_LEVEL": "WARNING"}
    env.pop("DASHBOARD_REDIS_URL", None)
    results: list[Result] = []

    # 1. Data: reuse a seeded database, or seed one and time it.
    count = await task_count(DB_NAME)
    if args.reseed or count is None or count < N_TASKS:
        log(f"seeding {N_TASKS:,} tasks into {DB_NAME} ...")
        await recreate_db(DB_NAME)
        cli("migrate", env=env)
        start = time.perf_counter()
        cli("seed", "--tasks", str(N_TASKS), "--random-seed", "1", env=env)
        seed_s = time.perf_counter() - start
        results.append(
            Result("seed 1,000,000 tasks", rate=f"{seed_s:.1f} s", note="target < 120 s")
        )
        vac = await vacuum_analyze()
        results.append(Result("VACUUM ANALYZE after the load", rate=f"{vac:.1f} s"))
    else:
        log(f"reusing {DB_NAME} ({count:,} tasks)")
        cli("migrate", env=env)
        results.append(Result("seed 1,000,000 tasks", rate="reused", note="--reseed to time it"))
        await vacuum_analyze()
    consistent = await rollups_consistent()
    if consistent is False:
        log("rebuilding analytics rollups (the seed bypasses the task hooks) ...")
        results.append(Result("rebuild analytics rollups", rate=f"{await rebuild_rollups():.1f} s"))

    # 2. Tokens and a real server.
    user = cli("token", "create", "--user", "bench", "--role", "user", env=env).split()[-1]
    agent = cli("token", "create", "--user", "bench-agent", "--role", "agent", env=env).split()[-1]
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "python"), "-m", "uvicorn", "dashboard_api.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=120) as probe:
            for _ in range(300):
                try:
                    if (await probe.get("/api/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the server did not start")
        await run_http(base, user, agent, args, results)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()

    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


async def run_http(
    base: str, user: str, agent: str, args: argparse.Namespace, results: list[Result]
) -> None:
    from dashboard_api.db.paging import encode_cursor
    from dashboard_api.services.tasks import ORDERINGS

    uh = {"Authorization": f"Bearer {user}"}
    ah = {"Authorization": f"Bearer {agent}"}
    n = args.requests
    now = datetime.now(UTC)
    week = {
        "created_after": (now - timedelta(days=7)).isoformat(),
        "created_before": now.isoformat(),
    }
    db = await connect(DB_NAME)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=120, headers=uh) as client:
            # A few tasks of one conversation (the seed has none) through the producer API.
            for i in range(20):
                r = await client.post(
                    "/api/tasks",
                    json={"agent_type": "claude-code", "input_message": f"bench {i}",
                          "conversation_id": "bench-conv", "source": "dashboard"},
                    headers=ah,
                )  # fmt: skip
                r.raise_for_status()
            lists: list[tuple[str, dict[str, Any], str]] = [
                ("list: first page", {}, ""),
                ("list: status=failed", {"status": "failed"}, "WHERE status = 'failed'"),
                (
                    "list: agent_type=reviewer",
                    {"agent_type": "reviewer"},
                    "WHERE agent_type = 'reviewer'",
                ),
                ("list: source=slack", {"source": "slack"}, "WHERE source = 'slack'"),
                ("list: created 7-day range", week, "WHERE created_at >= $1 AND created_at < $2"),
                (
                    "list: conversation_id",
                    {"conversation_id": "bench-conv"},
                    "WHERE conversation_id = 'bench-conv'",
                ),
                ("list: flow_id", {"flow_id": "flow-17"}, "WHERE flow_id = 'flow-17'"),
                ("list: user_id", {"user_id": "user-7"}, "WHERE user_id = 'user-7'"),
                (
                    "list: status+agent_type+7 days",
                    {"status": "completed", "agent_type": "claude-code", **week},
                    "WHERE status = 'completed' AND agent_type = 'claude-code' "
                    "AND created_at >= $1 AND created_at < $2",
                ),
                (
                    "list: q=payments (common)",
                    {"q": "payments"},
                    "WHERE input_message ILIKE '%payments%'",
                ),
                (
                    "list: q='flaky job #12' (rare)",
                    {"q": "flaky job #12"},
                    "WHERE input_message ILIKE '%flaky job #12%'",
                ),
                ("list: sort=-cost_usd", {"sort": "-cost_usd"}, ""),
            ]
            week_args = [now - timedelta(days=7), now]
            for name, params, where in lists:
                samples = await timed(n, lambda p=params: client.get("/api/tasks", params=p))
                body = (await client.get("/api/tasks", params=params)).json()
                sql_args = week_args if "$1" in where else []
                truth = await db.fetchval(f"SELECT count(*) FROM tasks {where}", *sql_args)  # noqa: S608
                note = f"total {body['total']:,}"
                if body["total"] != truth:
                    note += f" WRONG (count(*) = {truth:,})"
                results.append(Result(name, pct(samples, 0.5), pct(samples, 0.99), n, note=note))

            # Deep pages: a cursor 500,000 rows deep (its key read from the database), and
            # the same depth by page number.
            row = await db.fetchrow(
                "SELECT created_at, task_id FROM tasks ORDER BY created_at DESC, task_id DESC "  # noqa: S608
                f"OFFSET {DEPTH - 1} LIMIT 1"
            )
            cursor = encode_cursor(ORDERINGS["-created_at"], [row["created_at"], row["task_id"]])
            deep = await timed(n, lambda: client.get("/api/tasks", params={"cursor": cursor}))
            results.append(Result("list: cursor 500,000 deep", pct(deep, 0.5), pct(deep, 0.99), n))
            by_page = await timed(
                max(5, n // 10),
                lambda: client.get("/api/tasks", params={"page": DEPTH // 50 + 1}),
            )
            results.append(
                Result(
                    "list: page 10,001 (500,000 deep)",
                    pct(by_page, 0.5),
                    pct(by_page, 0.99),
                    len(by_page),
                )
            )

            some = (await client.get("/api/tasks", params={"per_page": 1})).json()["items"][0]
            detail = await timed(n, lambda: client.get(f"/api/tasks/{some['task_id']}"))
            results.append(Result("task detail", pct(detail, 0.5), pct(detail, 0.99), n))

            # A log of 1,000 chunks, then append throughput (batched form).
            r = await client.post(
                "/api/tasks",
                json={"agent_type": "claude-code", "input_message": "log bench"},
                headers=ah,
            )
            log_task = r.json()["task_id"]
            chunks = [{"content": f"line {i:04d}: " + "x" * 60 + "\n"} for i in range(1000)]
            (
                await client.post(
                    f"/api/tasks/{log_task}/output", json={"chunks": chunks}, headers=ah
                )
            ).raise_for_status()
            full = await timed(n, lambda: client.get(f"/api/tasks/{log_task}/logs/full"))
            results.append(Result("full log (1,000 chunks)", pct(full, 0.5), pct(full, 0.99), n))

            results.append(await append_throughput(client, ah))
            results.append(await page_throughput(base, uh))

            # 3. Baseline: the naive query, straight on the database.
            await baseline(db, week_args, results)
    finally:
        await db.close()


async def append_throughput(client: httpx.AsyncClient, ah: dict[str, str]) -> Result:
    """Batched appends (1,000 chunks of 80 bytes each) to 4 tasks, 4 requests in flight."""
    tasks = []
    for i in range(4):
        r = await client.post(
            "/api/tasks",
            json={"agent_type": "claude-code", "input_message": f"append bench {i}"},
            headers=ah,
        )
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
        "output appends (batched, 4 tasks in parallel)",
        rate=f"{total / elapsed:,.0f} chunks/s",
        n=4 * per_task,
        note="target >= 5,000 chunks/s",
    )


async def page_throughput(base: str, uh: dict[str, str]) -> Result:
    """The first page with 32 connections, each sending requests back to back."""
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    per_conn = 25
    async with httpx.AsyncClient(base_url=base, timeout=120, headers=uh, limits=limits) as c:
        await c.get("/api/tasks")
        latencies: list[float] = []

        async def worker() -> None:
            for _ in range(per_conn):
                t0 = time.perf_counter()
                (await c.get("/api/tasks")).raise_for_status()
                latencies.append((time.perf_counter() - t0) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(32)))
        elapsed = time.perf_counter() - start
    return Result(
        "first page, 32 concurrent connections",
        pct(latencies, 0.5),
        pct(latencies, 0.99),
        len(latencies),
        rate=f"{len(latencies) / elapsed:,.0f} req/s",
    )


async def baseline(db: asyncpg.Connection, week_args: list[Any], results: list[Result]) -> None:
    reps = 5
    cases = [
        ("baseline: first page + count(*)", "", 0),
        ("baseline: status=failed + count(*)", "WHERE status = 'failed'", 0),
        (
            "baseline: status+agent_type+7 days + count(*)",
            "WHERE status = 'completed' AND agent_type = 'claude-code' "
            "AND created_at >= $1 AND created_at < $2",
            0,
        ),
        ("baseline: q=payments + count(*)", "WHERE input_message ILIKE '%payments%'", 0),
        ("baseline: OFFSET 500,000 + count(*)", "", DEPTH),
    ]
    for name, where, offset in cases:
        page, count = naive_sql(where, offset)
        sql_args = week_args if "$1" in where else []

        async def run(page: str = page, count: str = count, a: list[Any] = sql_args) -> None:
            await db.fetch(page, *a)
            await db.fetchval(count, *a)

        samples = await timed(reps, run)
        results.append(Result(name, pct(samples, 0.5), pct(samples, 0.99), reps))


def print_table(results: list[Result]) -> None:
    by_name = {r.name: r for r in results}

    def ratio(fast: str, slow: str) -> str:
        a, b = by_name.get(fast), by_name.get(slow)
        if a and b and a.p50_ms and b.p50_ms:
            return f"{b.p50_ms / a.p50_ms:,.1f}x"
        return "-"

    print(f"\n{'measurement':<48} {'p50 ms':>9} {'p99 ms':>9} {'n':>5}  rate / note")
    print("-" * 110)
    for r in results:
        p50 = f"{r.p50_ms:.2f}" if r.p50_ms is not None else ""
        p99 = f"{r.p99_ms:.2f}" if r.p99_ms is not None else ""
        tail = "  ".join(x for x in (r.rate, r.note) if x)
        print(f"{r.name:<48} {p50:>9} {p99:>9} {r.n or '':>5}  {tail}")
    print("-" * 110)
    print(
        "cursor 500,000 deep vs OFFSET baseline at the same depth: "
        f"{ratio('list: cursor 500,000 deep', 'baseline: OFFSET 500,000 + count(*)')} faster "
        "(target >= 20x)"
    )
    print(
        "first page vs naive first page + count(*): "
        f"{ratio('list: first page', 'baseline: first page + count(*)')} faster"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100, help="samples per measurement")
    parser.add_argument("--reseed", action="store_true", help="drop and seed the database again")
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
