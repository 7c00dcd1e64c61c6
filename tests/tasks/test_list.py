"""`GET /api/tasks`: every filter and sort against brute force, page and cursor walks, the
envelope, cursor errors and live totals (deep pages: test_list_deep_pages.py)."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from tests.support.clock import T0
from tests.support.task_lists import (
    FILTERS,
    SORTS,
    Headers,
    datasets,
    fixed_rows,
    queries,
    reference,
    ts,
    walk_cursor,
    walk_pages,
    wire,
)
from tests.support.tasks import Row, clear_tasks, load_rows


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
