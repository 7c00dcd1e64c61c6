"""Retention: a prune deletes old terminal tasks with their output and events, once, and
changes no analytics figure, list total or conversation total of what it keeps."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import func, select

from dashboard_api.app import create_app
from dashboard_api.db.engine import Database
from dashboard_api.db.models import Task, TaskEvent, TaskOutputChunk
from dashboard_api.services.retention import PRUNE_ALIGNMENT, aligned_cutoff, prune_once
from tests.support.env import Backend

Headers = Callable[[str], dict[str, str]]
NOW = datetime.now(UTC)
CUTOFF = NOW - timedelta(days=30)
# Ages in days, before and after the cut-off (one within the aligned block before it).
AGES = (90, 61, 45, 31, 30.01, 29, 3, 0.01)
ENDS = ("completed", "failed", "cancelled", "queued", "running")


def ts(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def make_task(
    client: httpx.AsyncClient,
    auth: Headers,
    task_id: str,
    created_at: datetime,
    end: str,
    i: int,
    conversation_id: str | None = None,
) -> None:
    body: dict[str, Any] = {
        "task_id": task_id,
        "agent_type": ("coder", "reviewer")[i % 2],
        "source": ("api", "github", "slack")[i % 3],
        "input_message": f"task {i}: " + ("needle " if i % 4 == 0 else "") + "work",
        "model": "claude-haiku-4",
        "created_at": ts(created_at),
        "user_id": "alice",
    }
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    r = await client.post("/api/tasks", json=body, headers=auth("agent"))
    assert r.status_code == 201, r.text
    if end == "queued":
        return
    if end != "cancelled" or i % 2:
        r = await client.patch(
            f"/api/tasks/{task_id}", json={"status": "running"}, headers=auth("agent")
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            f"/api/tasks/{task_id}/output",
            json={"chunks": [{"content": f"line {n}\n"} for n in range(1 + i % 3)]},
            headers=auth("agent"),
        )
        assert r.status_code == 200, r.text
    if end == "running":
        return
    metrics = {"input_tokens": 100 * i, "output_tokens": 7 * i, "cost_usd": i / 1000}
    r = await client.patch(
        f"/api/tasks/{task_id}", json={"status": end, **metrics}, headers=auth("agent")
    )
    assert r.status_code == 200, r.text


async def make_data(client: httpx.AsyncClient, auth: Headers) -> dict[str, tuple[datetime, str]]:
    """Tasks of every end status at every age; half of them in one conversation."""
    r = await client.post("/api/conversations", json={"title": "kept"}, headers=auth("user"))
    assert r.status_code == 201, r.text
    conversation = r.json()["conversation_id"]
    made: dict[str, tuple[datetime, str]] = {}
    i = 0
    for age in AGES:
        for end in ENDS:
            for k in range(2):
                task_id = f"t-{i:03d}"
                created = NOW - timedelta(days=age, minutes=k * 37)
                await make_task(client, auth, task_id, created, end, i, conversation if k else None)
                made[task_id] = (created, end)
                i += 1
    return made


def prunable(made: dict[str, tuple[datetime, str]]) -> set[str]:
    cut = aligned_cutoff(CUTOFF)
    ended = {t for t, (_, end) in made.items() if end not in ("queued", "running")}
    return {t for t in ended if made[t][0] < cut}


async def counts(db: Database) -> tuple[int, int, int]:
    async with db.read() as session:
        row = (
            await session.execute(
                select(
                    select(func.count()).select_from(Task).scalar_subquery(),
                    select(func.count()).select_from(TaskOutputChunk).scalar_subquery(),
                    select(func.count()).select_from(TaskEvent).scalar_subquery(),
                )
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def task_ids(db: Database) -> set[str]:
    async with db.read() as session:
        return set((await session.scalars(select(Task.task_id))).all())


# --- figures a prune must leave as they were ----------------------------------------------

WINDOWS = [
    # all time, whole UTC days, and windows whose edges lie after the cut-off
    {"from": ts(aligned_cutoff(NOW - timedelta(days=400))), "to": ts(NOW + timedelta(days=30))},
    {"from": ts(aligned_cutoff(NOW - timedelta(days=100))), "to": ts(NOW + timedelta(days=1))},
    {"from": ts(CUTOFF), "to": ts(NOW + timedelta(hours=1))},
    {"from": ts(NOW - timedelta(days=29, minutes=7)), "to": ts(NOW - timedelta(days=2, hours=3))},
]
LIST_QUERIES: list[dict[str, Any]] = [
    {},
    {"status": "completed"},
    {"status": "queued,running"},
    {"agent_type": "coder"},
    {"source": "github", "status": "failed"},
    {"created_after": ts(NOW - timedelta(days=50))},
    {"created_before": ts(NOW - timedelta(days=40))},
    {"created_after": ts(NOW - timedelta(days=70)), "created_before": ts(NOW - timedelta(days=2))},
    {"q": "needle"},
    {"q": "needle", "status": "completed,queued"},
    {"user_id": "alice"},
]


async def analytics(client: httpx.AsyncClient, auth: Headers) -> list[Any]:
    out = []
    for window in WINDOWS:
        for path, extra in (
            ("/api/analytics/summary", {}),
            ("/api/analytics/performance", {}),
            ("/api/analytics/costs/histogram", {"period": "day"}),
            ("/api/analytics/costs/histogram", {"period": "hour", "tz": "Asia/Kolkata"}),
            ("/api/analytics/summary", {"agent_type": "coder", "source": "github"}),
        ):
            if extra.get("period") == "hour" and window in WINDOWS[:2]:
                continue  # more than 2,000 buckets
            r = await client.get(path, params={**window, **extra}, headers=auth("user"))
            assert r.status_code == 200, (path, r.text)
            out.append((path, window, extra, r.json()))
    return out


async def list_walk(
    client: httpx.AsyncClient, auth: Headers, params: dict[str, Any]
) -> tuple[list[str], int]:
    """Every id of a cursor walk, and the total each page claimed (all the same)."""
    ids: list[str] = []
    totals = set()
    cursor = None
    while True:
        query = {**params, "per_page": 9}
        if cursor is not None:
            query["cursor"] = cursor
        r = await client.get("/api/tasks", params=query, headers=auth("user"))
        assert r.status_code == 200, r.text
        body = r.json()
        totals.add(body["total"])
        ids += [i["task_id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(totals) == 1, totals
    return ids, totals.pop()


async def assert_lists_consistent(client: httpx.AsyncClient, auth: Headers) -> None:
    for params in LIST_QUERIES:
        ids, total = await list_walk(client, auth, params)
        assert total == len(ids), (params, total, len(ids))
        # page mode agrees, deep pages included
        r = await client.get(
            "/api/tasks", params={**params, "per_page": 4, "page": 3}, headers=auth("user")
        )
        assert r.status_code == 200, r.text
        assert r.json()["total"] == total
        assert [i["task_id"] for i in r.json()["items"]] == ids[8:12]
        assert r.json()["pages"] == math.ceil(total / 4)


async def conversations(client: httpx.AsyncClient, auth: Headers) -> list[Any]:
    r = await client.get("/api/conversations", headers=auth("user"))
    assert r.status_code == 200, r.text
    return [
        {k: c[k] for k in ("conversation_id", "task_count", "total_cost_usd", "message_count")}
        for c in r.json()["items"]
    ]


# --- tests ---------------------------------------------------------------------------------


async def test_a_dry_run_deletes_nothing_and_counts_what_a_prune_deletes(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    made = await make_data(client, auth)
    db = app.state.ctx.db
    before = await counts(db)
    dry = await prune_once(db, older_than=CUTOFF, dry_run=True)
    assert await counts(db) == before
    assert dry.tasks == len(prunable(made)) > 0
    assert dry.chunks > 0
    assert dry.events > 0
    assert "would delete" in dry.line()

    done = await prune_once(db, older_than=CUTOFF, batch_size=4)
    assert (done.tasks, done.chunks, done.events) == (dry.tasks, dry.chunks, dry.events)
    after = await counts(db)
    assert after == (before[0] - dry.tasks, before[1] - dry.chunks, before[2] - dry.events)
    assert await task_ids(db) == set(made) - prunable(made)
    assert (await prune_once(db, older_than=CUTOFF)).tasks == 0


async def test_a_prune_never_deletes_a_task_that_has_not_ended(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    made = await make_data(client, auth)
    db = app.state.ctx.db
    # Everything old enough, whatever its status.
    report = await prune_once(db, older_than=NOW + timedelta(days=1), batch_size=3)
    left = await task_ids(db)
    live = {t for t, (_, end) in made.items() if end in ("queued", "running")}
    assert left == live
    assert report.tasks == len(made) - len(live)
    for task_id in live:
        r = await client.get(f"/api/tasks/{task_id}/logs/full", headers=auth("user"))
        assert r.status_code == 200
        assert r.json()["events"], task_id  # its history is still there
    # A task that ends later is pruned by the next run.
    running = sorted(t for t in live if made[t][1] == "running")[0]
    r = await client.patch(
        f"/api/tasks/{running}", json={"status": "completed"}, headers=auth("agent")
    )
    assert r.status_code == 200
    assert (await prune_once(db, older_than=NOW + timedelta(days=1))).tasks == 1


async def test_a_prune_keeps_analytics_list_totals_and_conversation_totals(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    made = await make_data(client, auth)
    figures = await analytics(client, auth)
    talks = await conversations(client, auth)
    await assert_lists_consistent(client, auth)

    report = await prune_once(app.state.ctx.db, older_than=CUTOFF, batch_size=5)
    assert report.tasks == len(prunable(made)) > 0

    assert await analytics(client, auth) == figures
    assert await conversations(client, auth) == talks
    await assert_lists_consistent(client, auth)
    ids, total = await list_walk(client, auth, {})
    assert set(ids) == set(made) - prunable(made)

    # Writes after the prune, old and new, are counted like any other.
    await make_task(client, auth, "late-old", NOW - timedelta(days=80), "completed", 5)
    await make_task(client, auth, "late-new", NOW - timedelta(days=1), "failed", 6)
    await assert_lists_consistent(client, auth)
    assert (await list_walk(client, auth, {}))[1] == total + 2


async def test_two_prunes_at_once_delete_each_task_once(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, backend: Backend
) -> None:
    made = await make_data(client, auth)
    expected = prunable(made)
    before = await counts(app.state.ctx.db)
    replicas = [Database(backend.database_url) for _ in range(2)]
    try:
        reports = await asyncio.gather(
            *(prune_once(db, older_than=CUTOFF, batch_size=3) for db in replicas)
        )
    finally:
        for db in replicas:
            await db.dispose()
    assert sum(r.tasks for r in reports) == len(expected)
    after = await counts(app.state.ctx.db)
    assert before[1] - after[1] == sum(r.chunks for r in reports)
    assert before[2] - after[2] == sum(r.events for r in reports)
    assert await task_ids(app.state.ctx.db) == set(made) - expected


def test_the_cutoff_is_aligned_down() -> None:
    at = datetime(2026, 11, 3, 13, 59, 59, 999_999, tzinfo=UTC)
    assert aligned_cutoff(at) == datetime(2026, 11, 3, 12, tzinfo=UTC)
    assert aligned_cutoff(datetime(2026, 11, 3, 12, tzinfo=UTC)) == datetime(
        2026, 11, 3, 12, tzinfo=UTC
    )
    assert PRUNE_ALIGNMENT == 4 * 3600


async def test_deep_page_seeks_count_the_pruned_period_from_the_rows(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, backend: Backend
) -> None:
    """The rollup seek behind deep pages (PostgreSQL) finds the row OFFSET finds, with
    the pruned period counted from the table."""
    from dashboard_api.services.tasks import (
        ORDERINGS,
        TaskFilters,
        locate_by_rollups,
    )

    await make_data(client, auth)
    await prune_once(app.state.ctx.db, older_than=CUTOFF)
    filters = [
        ({}, TaskFilters()),
        ({"status": "completed,queued"}, TaskFilters(status=("completed", "queued"))),
        (
            {"agent_type": "coder", "source": "api,github"},
            TaskFilters(agent_type=("coder",), source=("api", "github")),
        ),
        (
            {"created_after": ts(NOW - timedelta(days=70))},
            TaskFilters(created_after=NOW - timedelta(days=70)),
        ),
        (
            {"created_before": ts(NOW - timedelta(days=2))},
            TaskFilters(created_before=NOW - timedelta(days=2)),
        ),
        (
            {"created_after": ts(NOW - timedelta(days=50)), "created_before": ts(CUTOFF)},
            TaskFilters(created_after=NOW - timedelta(days=50), created_before=CUTOFF),
        ),
    ]
    for params, f in filters:
        for sort in ("created_at", "-created_at"):
            expected, _ = await list_walk(client, auth, {**params, "sort": sort})
            async with app.state.ctx.db.read_statements() as session:
                for offset in range(len(expected) + 2):
                    answered, key = await locate_by_rollups(session, f, ORDERINGS[sort], offset)
                    if backend.name == "sqlite":
                        assert not answered  # SQLite walks its index instead
                        break
                    assert answered, (params, sort, offset)
                    if offset < len(expected):
                        assert key is not None
                        assert key[1] == expected[offset], (params, offset)
                    else:
                        assert key is None


async def test_retention_runs_as_a_periodic_job_when_set(
    backend: Backend, client: httpx.AsyncClient, auth: Headers, app: FastAPI
) -> None:
    """DASHBOARD_RETENTION_DAYS turns the `retention-prune` job on (one leader per job,
    jobs/); unset, it is not scheduled and nothing is deleted."""
    made = await make_data(client, auth)
    assert "retention-prune" not in app.state.ctx.jobs.jobs
    kept = create_app(backend.settings(retention_days=30, prune_interval_seconds=3600))
    async with LifespanManager(kept, startup_timeout=30, shutdown_timeout=30):
        runner = kept.state.ctx.jobs
        assert runner.jobs["retention-prune"].every == 3600
        assert await runner.tick("retention-prune")
        assert runner.stats["retention-prune"].failures == 0
        assert await task_ids(kept.state.ctx.db) == set(made) - prunable(made)


async def empty_before(db: Database) -> datetime | None:
    from dashboard_api.db.models.analytics import STATE_TABLE
    from dashboard_api.services.analytics.layout import EPOCH

    async with db.read() as session:
        seconds = await session.scalar(
            select(STATE_TABLE.c.empty_before_s).where(STATE_TABLE.c.id == 1)
        )
    return None if seconds is None else EPOCH + timedelta(seconds=seconds)


async def test_lists_count_from_where_a_task_is_left_and_an_old_insert_moves_it_back(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    """After a prune the tasks table holds no task before `empty_before_s` (lists count
    and read from there): it stops at a task the prune kept, reaches the cut-off once
    that task is pruned too, and an insert of an older task moves it back before it."""
    db = app.state.ctx.db
    for i, (age, end) in enumerate(
        [(70, "completed"), (60, "failed"), (50, "queued"), (40, "cancelled"), (10, "completed")]
    ):
        await make_task(client, auth, f"e-{i}", NOW - timedelta(days=age), end, i)
    await assert_lists_consistent(client, auth)
    assert await empty_before(db) is None

    await prune_once(db, older_than=CUTOFF, batch_size=1)
    kept = NOW - timedelta(days=50)
    found = await empty_before(db)
    assert found is not None
    assert kept - timedelta(seconds=1) < found <= kept  # not past the queued task
    assert set((await list_walk(client, auth, {"sort": "created_at"}))[0]) == {"e-2", "e-4"}
    await assert_lists_consistent(client, auth)

    r = await client.patch("/api/tasks/e-2", json={"status": "cancelled"}, headers=auth("agent"))
    assert r.status_code == 200, r.text
    assert (await prune_once(db, older_than=CUTOFF)).tasks == 1
    assert await empty_before(db) == aligned_cutoff(CUTOFF)
    assert (await list_walk(client, auth, {}))[0] == ["e-4"]
    await assert_lists_consistent(client, auth)

    # A task created before the horizon (an import, spans sent late) moves it back in
    # its own transaction: this process's lists, which remember the horizon, see it.
    await make_task(client, auth, "late-old", NOW - timedelta(days=80), "completed", 7)
    found = await empty_before(db)
    assert found is not None
    assert found <= NOW - timedelta(days=80)
    for params in ({}, {"sort": "created_at"}, {"status": "completed"}):
        ids, total = await list_walk(client, auth, params)
        expected = (
            ["late-old", "e-4"] if params.get("sort") == "created_at" else ["e-4", "late-old"]
        )
        assert ids == expected, params
        assert total == 2
    await assert_lists_consistent(client, auth)
