"""`GET /api/tasks`: every filter and sort against brute force, page and cursor walks."""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from hypothesis import example, given
from hypothesis import strategies as st

from tests.support.clock import T0
from tests.support.tasks import Row, clear_tasks, load_rows

Headers = Callable[[str], dict[str, str]]

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
AGENTS = ("coder", "reviewer", "triage")
SOURCES = ("api", "github", "slack")
MESSAGES = (
    "Fix ÄRGER now",
    "kein ärger",
    "100% done",
    "a_b c",
    "ab c",
    "plain text",
    "Ünïcode ÉTÉ",
    "x%y",
    "back\\slash",
    "it's O'Brien\\'s; --",
    "",
)
NEEDLES = (
    "'s",
    "\\'",
    "ärger",
    "ÄRGER",
    "%",
    "_",
    "a_b",
    "100%",
    "été",
    "ÉTÉ",
    "x%y",
    "PLAIN",
    "\\",
    "zz",
)
# Creation instants: few (many ties), on and off the 15-minute rollup blocks, some days
# apart, so that counted totals combine whole blocks with raw edges.
OFFSETS = [
    timedelta(0),
    timedelta(minutes=1),
    timedelta(minutes=14, seconds=59, microseconds=999_999),
    timedelta(minutes=15),
    timedelta(hours=1, minutes=7),
    timedelta(hours=5),
    timedelta(days=1, hours=3),
    timedelta(days=6, minutes=45),
    timedelta(days=-20, minutes=-3),
]
JITTER = st.sampled_from(
    [timedelta(0), timedelta(microseconds=1), timedelta(microseconds=-1), timedelta(minutes=7)]
)
SORTS = (
    "created_at",
    "-created_at",
    "cost_usd",
    "-cost_usd",
    "duration_seconds",
    "-duration_seconds",
)


def ts(d: datetime) -> str:
    return d.isoformat().replace("+00:00", "Z")


# --- the reference ------------------------------------------------------------------------


def reference(rows: list[Row], params: dict[str, Any], sort: str) -> list[str]:
    """Filter and sort by brute force, as docs/api.md §3 words it."""

    def multi(name: str) -> set[str] | None:
        v = params.get(name)
        if v is None:
            return None
        values = v if isinstance(v, list) else [v]
        return {x for item in values for x in item.split(",") if x}

    out = []
    for r in rows:
        if (s := multi("status")) and r.status not in s:
            continue
        if (a := multi("agent_type")) and r.agent_type not in a:
            continue
        if (so := multi("source")) and r.source not in so:
            continue
        if "created_after" in params and r.created_at < params["created_after_dt"]:
            continue
        if "created_before" in params and r.created_at >= params["created_before_dt"]:
            continue
        if "conversation_id" in params and r.conversation_id != params["conversation_id"]:
            continue
        if "flow_id" in params and r.flow_id != params["flow_id"]:
            continue
        if "user_id" in params and r.user_id != params["user_id"]:
            continue
        if "q" in params and params["q"].lower() not in r.input_message.lower():
            continue
        out.append(r)

    desc = sort.startswith("-")
    field = sort.lstrip("-")
    if field == "created_at":
        out.sort(key=lambda r: (r.created_at, r.task_id), reverse=desc)
    elif field == "cost_usd":
        out.sort(key=lambda r: (r.cost_micros, r.task_id), reverse=desc)
    else:
        with_d = sorted(
            (r for r in out if r.duration_us is not None),
            key=lambda r: (r.duration_us or 0, r.task_id),
            reverse=desc,
        )
        without = sorted(
            (r for r in out if r.duration_us is None), key=lambda r: r.task_id, reverse=desc
        )
        out = with_d + without
    return [r.task_id for r in out]


def wire(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if not k.endswith("_dt")}


async def walk_pages(
    client: httpx.AsyncClient, auth: Headers, params: dict[str, Any], per_page: int
) -> tuple[list[str], int]:
    """Every page in page mode; checks the envelope of each page."""
    ids: list[str] = []
    page = 1
    total = -1
    while True:
        r = await client.get(
            "/api/tasks",
            params={**wire(params), "page": page, "per_page": per_page},
            headers=auth("user"),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        total = body["total"]
        assert body["page"] == page
        assert body["per_page"] == per_page
        assert body["pages"] == math.ceil(total / per_page)
        ids += [i["task_id"] for i in body["items"]]
        if page < body["pages"]:
            assert len(body["items"]) == per_page
            assert body["next_cursor"] is not None
            page += 1
            continue
        assert body["next_cursor"] is None
        return ids, total


async def walk_cursor(
    client: httpx.AsyncClient, auth: Headers, params: dict[str, Any], per_page: int
) -> tuple[list[str], int]:
    """A cursor walk that starts with a plain request."""
    r = await client.get(
        "/api/tasks", params={**wire(params), "per_page": per_page}, headers=auth("user")
    )
    assert r.status_code == 200, r.text
    body = r.json()
    total = body["total"]
    ids = [i["task_id"] for i in body["items"]]
    pages = 1
    while body["next_cursor"] is not None:
        r = await client.get(
            "/api/tasks",
            params={**wire(params), "per_page": per_page, "cursor": body["next_cursor"]},
            headers=auth("user"),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["page"] is None
        assert body["total"] == total
        assert body["pages"] == math.ceil(total / per_page)
        ids += [i["task_id"] for i in body["items"]]
        pages += 1
        assert pages <= total + 1, "the walk does not end"
    return ids, total


# --- data -------------------------------------------------------------------------------


@st.composite
def datasets(draw: st.DrawFn) -> list[Row]:
    n = draw(st.integers(0, 24))
    numbers = draw(st.lists(st.integers(0, 9999), min_size=n, max_size=n, unique=True))
    rows = []
    for num in numbers:
        rows.append(
            Row(
                task_id=f"t{num:04d}",
                # Few distinct instants and costs: many ties, so the tiebreaker matters.
                created_at=T0 + draw(st.sampled_from(OFFSETS)),
                status=draw(st.sampled_from(STATUSES)),
                agent_type=draw(st.sampled_from(AGENTS)),
                source=draw(st.sampled_from(SOURCES)),
                input_message=draw(st.sampled_from(MESSAGES)),
                user_id=draw(st.sampled_from([None, "u1", "u2"])),
                conversation_id=draw(st.sampled_from([None, "c1", "c2"])),
                flow_id=draw(st.sampled_from([None, "f1"])),
                cost_micros=draw(st.sampled_from([0, 1, 250_000, 1_000_000])),
                duration_us=draw(st.sampled_from([None, None, 0, 1_500_000, 60_000_000])),
            )
        )
    return rows


@st.composite
def queries(draw: st.DrawFn) -> dict[str, Any]:
    params: dict[str, Any] = {}

    def multi(name: str, values: tuple[str, ...]) -> None:
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(values), min_size=1, max_size=3))
            params[name] = ",".join(chosen) if draw(st.booleans()) else chosen

    multi("status", STATUSES)
    multi("agent_type", AGENTS)
    multi("source", SOURCES)
    if draw(st.booleans()):
        after = T0 + draw(st.sampled_from(OFFSETS)) + draw(JITTER)
        params["created_after"] = ts(after)
        params["created_after_dt"] = after
    if draw(st.booleans()):
        before = T0 + draw(st.sampled_from(OFFSETS)) + draw(JITTER)
        # Any offset is accepted: the same instant written in +02:00.
        params["created_before"] = before.astimezone(
            __import__("datetime").timezone(timedelta(hours=2))
        ).isoformat()
        params["created_before_dt"] = before
    for name, values in (
        ("user_id", ("u1", "u2", "nobody")),
        ("conversation_id", ("c1", "c2")),
        ("flow_id", ("f1",)),
        ("q", NEEDLES),
    ):
        if draw(st.integers(0, 3)) == 0:
            params[name] = draw(st.sampled_from(values))
    return params


@pytest.mark.slow
@given(rows=datasets(), params=queries(), sort=st.sampled_from(SORTS), per_page=st.integers(1, 7))
async def test_walks_match_brute_force(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    rows: list[Row],
    params: dict[str, Any],
    sort: str,
    per_page: int,
) -> None:
    await clear_tasks(app)
    await load_rows(app, rows)
    query = {**params, "sort": sort}
    expected = reference(rows, params, sort)
    by_page, total = await walk_pages(client, auth, query, per_page)
    assert total == len(expected)
    assert by_page == expected
    by_cursor, total = await walk_cursor(client, auth, query, per_page)
    assert total == len(expected)
    assert by_cursor == expected


# --- a fixed data set for each filter and sort -------------------------------------------


def fixed_rows() -> list[Row]:
    rows = []
    for i in range(30):
        rows.append(
            Row(
                task_id=f"k{(i * 7) % 30:03d}",
                created_at=T0 + timedelta(seconds=10 * (i % 6)),
                status=STATUSES[i % 5],
                agent_type=AGENTS[i % 3],
                source=SOURCES[(i // 3) % 3],
                input_message=MESSAGES[i % len(MESSAGES)],
                user_id=[None, "u1", "u2"][i % 3],
                conversation_id=[None, "c1"][i % 2],
                flow_id=["f1", None, None][i % 3],
                cost_micros=[0, 5, 5, 1_000_000][i % 4],
                duration_us=[None, 3, 3, 0, 10**9][i % 5],
                error="boom" if i % 4 == 0 else None,
            )
        )
    return rows


FILTERS: list[dict[str, Any]] = [
    {},
    {"status": "failed"},
    {"status": ["failed", "running"]},
    {"status": "failed,running"},
    {"agent_type": "coder"},
    {"agent_type": ["coder", "triage"]},
    {"agent_type": "coder,triage"},
    {"source": "github"},
    {"source": ["github", "slack"]},
    {"source": "github,slack"},
    {"conversation_id": "c1"},
    {"flow_id": "f1"},
    {"user_id": "u2"},
    {"q": "ärger"},
    {"q": "ÄRGER"},
    {"q": "%"},
    {"q": "_"},
    {"q": "a_b"},
    {"q": "\\"},
    {"q": "'s"},
    {"q": "BRIEN\\'S; --"},
    {"q": "été"},
    {
        "created_after": ts(T0 + timedelta(seconds=10)),
        "created_after_dt": T0 + timedelta(seconds=10),
    },
    {
        "created_before": ts(T0 + timedelta(seconds=30)),
        "created_before_dt": T0 + timedelta(seconds=30),
    },
    {
        "created_after": ts(T0 + timedelta(seconds=20)),
        "created_after_dt": T0 + timedelta(seconds=20),
        "created_before": ts(T0 + timedelta(seconds=30)),
        "created_before_dt": T0 + timedelta(seconds=30),
        "status": "completed,failed,queued",
    },
]


@pytest.mark.parametrize("sort", SORTS)
async def test_each_filter_and_sort(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers, sort: str
) -> None:
    rows = fixed_rows()
    await load_rows(app, rows)
    for params in FILTERS:
        expected = reference(rows, params, sort)
        r = await client.get(
            "/api/tasks",
            params={**wire(params), "sort": sort, "per_page": 200},
            headers=auth("user"),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert [i["task_id"] for i in body["items"]] == expected, params
        assert body["total"] == len(expected)
    # Sanity: the literal filters found what they should.
    assert len(reference(rows, {"q": "%"}, sort)) > 0
    assert len(reference(rows, {"q": "BRIEN\\'S; --"}, sort)) > 0
    assert len(reference(rows, {"q": "ärger"}, sort)) == len(reference(rows, {"q": "ÄRGER"}, sort))


async def test_default_sort_is_newest_first(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    rows = fixed_rows()
    await load_rows(app, rows)
    body = (await client.get("/api/tasks?per_page=200", headers=auth("user"))).json()
    assert [i["task_id"] for i in body["items"]] == reference(rows, {}, "-created_at")


async def test_q_unicode_case_insensitive(client: httpx.AsyncClient, auth: Headers) -> None:
    for i, msg in enumerate(["Großer ÄRGER heute", "kein ärger", "ARGER ohne Umlaut"]):
        r = await client.post(
            "/api/tasks",
            json={"task_id": f"u{i}", "agent_type": "coder", "input_message": msg},
            headers=auth("agent"),
        )
        assert r.status_code == 201
    for needle in ("ärger", "ÄRGER", "äRgEr"):
        body = (await client.get("/api/tasks", params={"q": needle}, headers=auth("user"))).json()
        assert sorted(i["task_id"] for i in body["items"]) == ["u0", "u1"], needle


async def test_summary_fields(client: httpx.AsyncClient, auth: Headers) -> None:
    long = "é" * 150 + "x" * 150
    r = await client.post(
        "/api/tasks",
        json={"task_id": "s1", "agent_type": "coder", "input_message": long, "metadata": {"a": 1}},
        headers=auth("agent"),
    )
    assert r.status_code == 201
    await client.patch("/api/tasks/s1", json={"error": "bad"}, headers=auth("agent"))
    item = (await client.get("/api/tasks", headers=auth("user"))).json()["items"][0]
    assert item["input_preview"] == long[:200]
    assert item["has_error"] is True
    for hidden in ("input_message", "result", "error", "metadata"):
        assert hidden not in item
    full = (await client.get("/api/tasks/s1", headers=auth("user"))).json()
    for key in set(full) - {"input_message", "result", "error", "metadata"}:
        assert key in item


# --- the envelope -------------------------------------------------------------------------


async def test_empty_list_envelope(client: httpx.AsyncClient, auth: Headers) -> None:
    body = (await client.get("/api/tasks", headers=auth("user"))).json()
    assert body == {
        "items": [],
        "total": 0,
        "page": 1,
        "per_page": 50,
        "pages": 0,
        "next_cursor": None,
    }
    body = (await client.get("/api/tasks?page=3&per_page=5", headers=auth("user"))).json()
    assert body["items"] == []
    assert body["pages"] == 0
    assert body["page"] == 3


async def test_page_past_the_end(app: FastAPI, client: httpx.AsyncClient, auth: Headers) -> None:
    await load_rows(app, fixed_rows()[:5])
    body = (await client.get("/api/tasks?page=9&per_page=2", headers=auth("user"))).json()
    assert body["items"] == []
    assert body["total"] == 5
    assert body["pages"] == 3
    assert body["next_cursor"] is None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def test_cursor_errors(app: FastAPI, client: httpx.AsyncClient, auth: Headers) -> None:
    await load_rows(app, fixed_rows())
    first = (await client.get("/api/tasks?per_page=2", headers=auth("user"))).json()
    cursor = first["next_cursor"]
    assert cursor
    by_cost = (await client.get("/api/tasks?per_page=2&sort=cost_usd", headers=auth("user"))).json()
    cost_cursor = by_cost["next_cursor"]
    stamp = {"t": T0.isoformat()}
    bad = [
        "!!!",
        "not base64 at all ~~~",
        "a",
        _b64(b"\xff\xfe\x00junk"),
        _b64(b"[1,2,3]"),
        _b64(b'"just a string"'),
        _b64(orjson.dumps({"o": "-created_at"})),
        _b64(orjson.dumps({"o": "-created_at", "k": "x"})),
        _b64(orjson.dumps({"o": "-created_at", "k": [stamp]})),
        _b64(orjson.dumps({"o": "-created_at", "k": [stamp, "a", "b"]})),
        _b64(orjson.dumps({"o": "-created_at", "k": [1, "a"]})),
        _b64(orjson.dumps({"o": "-created_at", "k": [stamp, 5]})),
        _b64(orjson.dumps({"o": "-created_at", "k": [{"t": "yesterday"}, "a"]})),
        _b64(orjson.dumps({"o": "-created_at", "k": [{"t": 5}, "a"]})),
        _b64(orjson.dumps({"o": "-created_at", "k": [None, None]})),
        _b64(orjson.dumps({"o": "-created_at", "k": [stamp, None]})),
        _b64(orjson.dumps({"o": "-created_at", "k": [stamp, "a\u0000b"]})),
        _b64(orjson.dumps({"o": "-created_at", "k": [stamp, ["a"]]})),
        _b64(orjson.dumps({"o": "cost_usd", "k": [1.5, "a"]})),
        _b64(orjson.dumps({"o": "cost_usd", "k": [True, "a"]})),
        _b64(orjson.dumps({"o": "cost_usd", "k": ["1", "a"]})),
        _b64(b'{"o": "cost_usd", "k": [99999999999999999999999, "a"]}'),
        _b64(orjson.dumps({"o": "cost_usd", "k": [2**63, "a"]})),
        _b64(b'{"o": "cost_usd", "k": [-9223372036854775809, "a"]}'),
        _b64(orjson.dumps({"o": "duration_seconds", "k": ["x", "a"]})),
        _b64(b'{"o": "-created_at", "k": [{"t": "2026-01-01T00:00:00"}, "\\ud800"]}'),
        "x" * 5000,
    ]
    for c in bad:
        r = await client.get("/api/tasks", params={"cursor": c}, headers=auth("user"))
        assert r.status_code == 422, (c, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    # A cursor from another sort is refused, in both directions.
    r = await client.get("/api/tasks", params={"cursor": cost_cursor}, headers=auth("user"))
    assert r.status_code == 422
    r = await client.get(
        "/api/tasks", params={"cursor": cursor, "sort": "cost_usd"}, headers=auth("user")
    )
    assert r.status_code == 422
    # Page and cursor together.
    r = await client.get("/api/tasks", params={"cursor": cursor, "page": 1}, headers=auth("user"))
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    # The good cursor still works, and the filters may stay the same.
    r = await client.get("/api/tasks", params={"cursor": cursor}, headers=auth("user"))
    assert r.status_code == 200
    assert r.json()["page"] is None


BAD_QUERIES = [
    "status=bogus",
    "status=queued,bogus",
    "sort=name",
    "sort=-",
    "sort=cost",
    "created_after=yesterday",
    "created_before=2026-13-01T00:00:00Z",
    "created_after=2026-11-01T25:00:00Z",
    "per_page=0",
    "per_page=201",
    "per_page=-1",
    "per_page=x",
    "page=0",
    "page=-2",
    "page=1.5",
    "q=" + "x" * 1001,
    "user_id=" + "u" * 256,
    "q=a%00b",
    "user_id=a%00b",
    "conversation_id=%00",
    "flow_id=%00",
    "agent_type=cod%00er",
    "source=%00",
    "created_after=0001-01-01T00:00:00%2B01:00",
    "created_before=9999-12-31T23:59:59-01:00",
]


async def test_bad_list_queries_are_422(client: httpx.AsyncClient, auth: Headers) -> None:
    failures = []
    for query in BAD_QUERIES:
        r = await client.get(f"/api/tasks?{query}", headers=auth("user"))
        ok = (
            r.status_code == 422
            and r.headers["content-type"].startswith("application/problem+json")
            and r.json()["status"] == 422
            and isinstance(r.json()["errors"], list)
        )
        if not ok:
            failures.append((query, r.status_code, r.text[:200]))
    assert failures == []


async def test_totals_follow_live_writes(client: httpx.AsyncClient, auth: Headers) -> None:
    """Totals stay exact while tasks are written through the API (no rebuild involved)."""
    specs = [
        ("w0", "coder", "api", T0),
        ("w1", "coder", "github", T0 + timedelta(minutes=20)),
        ("w2", "triage", "github", T0 + timedelta(hours=3)),
        ("w3", "coder", "slack", T0 + timedelta(days=2, seconds=1)),
        ("w4", "triage", "api", T0 - timedelta(days=40)),
    ]
    for task_id, agent_type, source, created in specs:
        r = await client.post(
            "/api/tasks",
            json={"task_id": task_id, "agent_type": agent_type, "source": source,
                  "input_message": "x", "created_at": ts(created)},
            headers=auth("agent"),
        )  # fmt: skip
        assert r.status_code == 201
    moves = [("w0", "running"), ("w0", "completed"), ("w2", "failed"), ("w3", "cancelled")]
    for task_id, status in moves:
        r = await client.patch(
            f"/api/tasks/{task_id}", json={"status": status}, headers=auth("agent")
        )
        assert r.status_code == 200
    queries: list[dict[str, Any]] = [
        {},
        {"status": "queued"},
        {"status": "completed,failed"},
        {"agent_type": "coder"},
        {"source": "github", "status": "queued,failed"},
        {"created_after": ts(T0 + timedelta(minutes=5))},
        {"created_before": ts(T0 + timedelta(days=1))},
        {
            "created_after": ts(T0 - timedelta(days=50)),
            "created_before": ts(T0 + timedelta(days=3)),
        },
        {"created_after": ts(T0 + timedelta(minutes=20)), "agent_type": "coder,triage"},
    ]
    for params in queries:
        body = (
            await client.get("/api/tasks", params={**params, "per_page": 200}, headers=auth("user"))
        ).json()
        assert body["total"] == len(body["items"]), params
    counts = await client.get("/api/tasks", params={"status": "queued"}, headers=auth("user"))
    assert counts.json()["total"] == 2


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
