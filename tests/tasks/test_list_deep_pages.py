"""`GET /api/tasks` deep pages: the seek past SEEK_FROM_OFFSET, rollups locating an offset,
and exact pages under concurrent writes or when the rollups disagree with the index."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import example, given
from hypothesis import strategies as st

from tests.support.clock import T0
from tests.support.task_lists import (
    AGENTS,
    FILTERS,
    OFFSETS,
    SORTS,
    SOURCES,
    STATUSES,
    Headers,
    fixed_rows,
    reference,
    ts,
    walk_cursor,
    walk_pages,
)
from tests.support.tasks import Row, clear_tasks, load_rows


@pytest.mark.parametrize("sort", SORTS)
async def test_deep_pages_seek_to_their_first_key(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    sort: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past SEEK_FROM_OFFSET, page mode finds the page's first key, then reads from it."""
    from dashboard_api.db import paging

    monkeypatch.setattr(paging, "SEEK_FROM_OFFSET", 0)
    rows = fixed_rows()
    await load_rows(app, rows)
    for params in FILTERS:
        expected = reference(rows, params, sort)
        by_page, total = await walk_pages(client, auth, {**params, "sort": sort}, per_page=4)
        assert total == len(expected)
        assert by_page == expected, params
    body = (await client.get("/api/tasks?page=99&per_page=4", headers=auth("user"))).json()
    assert body["items"] == []
    assert body["total"] == len(rows)
    assert body["next_cursor"] is None


async def test_rollups_locate_every_offset_like_the_index(app: FastAPI) -> None:
    """locate_by_rollups answers (not falls back) and finds the very row OFFSET finds."""
    from dashboard_api.services.tasks import (
        ORDERINGS,
        TaskFilters,
        locate_by_rollups,
    )

    rows = [
        Row(
            task_id=f"r{i:03d}",
            created_at=T0 + OFFSETS[i % len(OFFSETS)] + timedelta(microseconds=i % 3),
            status=STATUSES[i % 5],
            agent_type=AGENTS[i % 3],
            source=SOURCES[(i // 3) % 3],
        )
        for i in range(40)
    ]
    await load_rows(app, rows)
    on_postgres = app.state.ctx.settings.database_url.startswith("postgresql")
    filters = [
        TaskFilters(),
        TaskFilters(status=("failed", "queued")),
        TaskFilters(agent_type=("coder",), source=("github", "api")),
        TaskFilters(created_after=T0 + timedelta(minutes=1), created_before=T0 + timedelta(days=2)),
        TaskFilters(created_before=T0 + timedelta(hours=5), status=("completed",)),
    ]
    for f in filters:
        for sort in ("created_at", "-created_at"):
            ordering = ORDERINGS[sort]
            params: dict[str, Any] = {}
            if f.status:
                params["status"] = list(f.status)
            if f.agent_type:
                params["agent_type"] = list(f.agent_type)
            if f.source:
                params["source"] = list(f.source)
            if f.created_after:
                params["created_after"], params["created_after_dt"] = "x", f.created_after
            if f.created_before:
                params["created_before"], params["created_before_dt"] = "x", f.created_before
            expected = reference(rows, params, sort)
            async with app.state.ctx.db.read_statements() as session:
                for offset in range(len(expected) + 2):
                    answered, key = await locate_by_rollups(session, f, ordering, offset)
                    if not on_postgres:
                        # SQLite walks its index instead (see rollup_seek).
                        assert (answered, key) == (False, None)
                        break
                    assert answered, (f, sort, offset)
                    if offset < len(expected):
                        assert key is not None
                        assert key[1] == expected[offset], (f, sort, offset)
                    else:
                        assert key is None


async def read_page(
    client: httpx.AsyncClient, auth: Headers, sort: str, page: int, per_page: int
) -> tuple[int, list[str]]:
    """(total, task ids) of one page of the whole list."""
    params: dict[str, str | int] = {"sort": sort, "page": page, "per_page": per_page}
    resp = await client.get("/api/tasks", params=params, headers=auth("user"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return body["total"], [i["task_id"] for i in body["items"]]


async def register_row(client: httpx.AsyncClient, auth: Headers, r: Row) -> None:
    """Register `r` through the API (so that the rollups move with it)."""
    body = {"task_id": r.task_id, "agent_type": r.agent_type, "source": r.source,
            "input_message": "x", "created_at": ts(r.created_at)}  # fmt: skip
    resp = await client.post("/api/tasks", json=body, headers=auth("agent"))
    assert resp.status_code == 201, resp.text


@pytest.mark.parametrize("sort", ["created_at", "-created_at"])
async def test_deep_pages_stay_exact_under_concurrent_writes(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    sort: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each rollup-sought page is read in one snapshot: the page at an offset is exactly
    that slice of the tasks its own `total` counted, while a writer adds tasks (through
    the API, so the rollups move) all over the order, before and after the page."""
    from dashboard_api.db import paging

    monkeypatch.setattr(paging, "SEEK_FROM_OFFSET", 0)
    start = [
        Row(task_id=f"s{i:03d}", created_at=T0 + OFFSETS[i % len(OFFSETS)] + timedelta(seconds=i))
        for i in range(60)
    ]
    await load_rows(app, start)
    # One writer, one task at a time: a snapshot holding `total` tasks holds exactly the
    # first `total - len(start)` of these.
    added = [
        Row(
            task_id=f"n{i:03d}",
            created_at=T0 + OFFSETS[(i * 5) % len(OFFSETS)] - timedelta(seconds=i),
        )
        for i in range(40)
    ]
    done = False

    async def writer() -> None:
        nonlocal done
        for r in added:
            await register_row(client, auth, r)
            await asyncio.sleep(0)
        done = True

    seen: list[tuple[int, int, list[str]]] = []

    async def reader() -> None:
        page = 2
        while not done or len(seen) < 12:
            seen.append((page, *await read_page(client, auth, sort, page, 3)))
            page = 2 + (page + 7) % 30

    await asyncio.gather(writer(), reader())
    checked = 0
    for page, total, ids in seen:
        if not ids:
            continue  # an empty page carries no total of its own snapshot
        snapshot = start + added[: total - len(start)]
        expected = reference(snapshot, {}, sort)
        offset = (page - 1) * 3
        assert ids == expected[offset : offset + 3], (page, total)
        checked += 1
    assert checked >= 10


class _WritesBetween:
    """A list request's session that commits writes (`after`) once each of its first
    statements has returned: the interleaving a loaded server sees at its worst."""

    def __init__(self, session: Any, after: Callable[[], Any]) -> None:
        self._session = session
        self._after = after

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._session.execute(*args, **kwargs)
        await self._after()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@given(
    n=st.integers(2, 9),
    per_page=st.integers(1, 3),
    beyond=st.integers(-2, 2),
    sort=st.sampled_from(["created_at", "-created_at"]),
    early=st.lists(st.booleans(), min_size=3, max_size=3),
)
# The seek finds nothing one past the end; the total read next counts a new task, so the
# index is walked; a task sorting first lands between the walked key and the page.
@example(n=3, per_page=1, beyond=0, sort="created_at", early=[False, False, True])
@example(n=4, per_page=2, beyond=0, sort="-created_at", early=[True, True, True])
async def test_deep_pages_stay_exact_when_writes_land_between_statements(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    per_page: int,
    beyond: int,
    sort: str,
    early: list[bool],
) -> None:
    """Around the end of the list (where the seek finds no row), a task registered after
    each statement of the request never makes a page disagree with its own total.

    The flake this pins down: the seek found no row, the total was then read by a second
    statement that saw one more task, so the page went to the index walk, whose key and
    page were two more statements; a task sorting before the page in between returned the
    page one row off the total it came with."""
    from dashboard_api.db import paging
    from dashboard_api.services.tasks import listing as tasks

    monkeypatch.setattr(paging, "SEEK_FROM_OFFSET", 0)
    await clear_tasks(app)
    start = [Row(task_id=f"s{i:03d}", created_at=T0 + timedelta(minutes=7 * i)) for i in range(n)]
    await load_rows(app, start)
    # Early ones sort before every page (both ways, by their key), late ones after.
    added = [
        Row(task_id=f"w{i}", created_at=T0 + timedelta(days=-3 if e else 3, seconds=i))
        for i, e in enumerate(early)
    ]
    if sort == "-created_at":
        added = [replace(r, created_at=T0 + (T0 - r.created_at)) for r in added]
    pending = list(added)

    async def register_next() -> None:
        if pending:
            await register_row(client, auth, pending.pop(0))

    real = paging.paginate  # not tasks.paginate: an earlier example patched that

    async def interleaved(session: Any, *args: Any, **kwargs: Any) -> Any:
        # A stand-in for the session that paginate uses only through execute().
        writes_between = _WritesBetween(session, register_next)
        return await real(writes_between, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tasks, "paginate", interleaved)
    offset = max(per_page, (n + beyond) // per_page * per_page)
    page = offset // per_page + 1
    total, ids = await read_page(client, auth, sort, page, per_page)
    snapshot = start + added[: total - n]
    assert ids == reference(snapshot, {}, sort)[offset : offset + per_page], total


async def test_deep_pages_walk_the_index_when_rollups_disagree(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rollups counting tasks that are gone (an older release's upkeep, a manual delete):
    where the seek finds no row though the total promises one, the page is read by
    walking the index, as OFFSET would."""
    from sqlalchemy import delete

    from dashboard_api.db import paging
    from dashboard_api.db.models import Task

    monkeypatch.setattr(paging, "SEEK_FROM_OFFSET", 0)
    rows = [Row(task_id=f"d{i:03d}", created_at=T0 + timedelta(minutes=20 * i)) for i in range(30)]
    await load_rows(app, rows)
    gone = {f"d{i:03d}" for i in range(0, 30, 2)}
    async with app.state.ctx.db.write() as session:
        await session.execute(delete(Task).where(Task.task_id.in_(gone)))
    left = [r for r in rows if r.task_id not in gone]
    expected = reference(left, {}, "created_at")
    for page in range(1, 9):
        resp = await client.get(
            "/api/tasks",
            params={"sort": "created_at", "page": page, "per_page": 2},
            headers=auth("user"),
        )
        assert resp.status_code == 200, resp.text
        ids = [i["task_id"] for i in resp.json()["items"]]
        assert ids == expected[(page - 1) * 2 : page * 2], page


@pytest.mark.parametrize("plan", ["matches first", "order index"])
async def test_q_plans_match_brute_force(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    plan: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both plans of a `q` list (the matches found once, then counted and paged; or the
    order's index walked with the count alongside) give the brute-force pages and totals,
    in page mode (deep pages included) and cursor mode, whatever the previous run hinted."""
    from dashboard_api.db import paging
    from dashboard_api.services.tasks import listing as tasks

    monkeypatch.setattr(paging, "SEEK_FROM_OFFSET", 4)
    monkeypatch.setattr(tasks, "FEW_MATCHES", 10**9 if plan == "matches first" else -1)
    rows = fixed_rows()
    await load_rows(app, rows)
    q_filters = [p for p in FILTERS if "q" in p]
    q_filters += [{**p, "status": "completed,failed", "agent_type": "coder"} for p in q_filters]
    for sort in SORTS:
        for params in q_filters:
            expected = reference(rows, params, sort)
            query = {**params, "sort": sort}
            by_page, total = await walk_pages(client, auth, query, per_page=2)
            assert (by_page, total) == (expected, len(expected)), (sort, params)
            by_cursor, total = await walk_cursor(client, auth, query, per_page=3)
            assert (by_cursor, total) == (expected, len(expected)), (sort, params)
