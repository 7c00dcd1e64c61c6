"""`GET /api/tasks/export`: the list's rows for the same filters, as CSV and JSON Lines."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from dashboard_api.services.task_export import EXPORT_FIELDS
from dashboard_api.settings import Settings
from tests.support.env import Backend
from tests.support.task_lists import SORTS, datasets, queries, reference, wire
from tests.support.tasks import Row, clear_tasks, load_rows

Headers = Callable[[str], dict[str, str]]
# Small batches, so that every export of a few rows crosses several batch boundaries.
BATCH = 3


@pytest.fixture
def settings(backend: Backend) -> Settings:
    return backend.settings(export_batch_rows=BATCH)


async def list_walk(
    client: httpx.AsyncClient, auth: Headers, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every item of a cursor walk of the list."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**wire(params), "per_page": 7}
        if cursor is not None:
            query["cursor"] = cursor
        r = await client.get("/api/tasks", params=query, headers=auth("user"))
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def export(
    client: httpx.AsyncClient, auth: Headers, params: dict[str, Any], fmt: str
) -> httpx.Response:
    r = await client.get(
        "/api/tasks/export", params={**wire(params), "format": fmt}, headers=auth("user")
    )
    assert r.status_code == 200, r.text
    return r


def parse_jsonl(body: bytes) -> list[dict[str, Any]]:
    assert body == b"" or body.endswith(b"\n")
    return [orjson.loads(line) for line in body.split(b"\n")[:-1]]


def parse_csv(body: bytes) -> list[dict[str, str]]:
    rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert rows[0] == list(EXPORT_FIELDS)
    assert all(len(r) == len(EXPORT_FIELDS) for r in rows)
    return [dict(zip(EXPORT_FIELDS, r, strict=True)) for r in rows[1:]]


def as_csv_fields(item: dict[str, Any]) -> dict[str, str]:
    """A list item as the CSV writes it: null empty, booleans true/false, numbers as str."""

    def one(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    return {k: one(item[k]) for k in EXPORT_FIELDS}


@pytest.mark.slow
@given(rows=datasets(), params=queries(), sort=st.sampled_from(SORTS))
async def test_export_equals_the_list_walk(
    app: FastAPI,
    client: httpx.AsyncClient,
    auth: Headers,
    rows: list[Row],
    params: dict[str, Any],
    sort: str,
) -> None:
    await clear_tasks(app)
    await load_rows(app, rows)
    query = {**params, "sort": sort}
    listed = await list_walk(client, auth, query)
    assert [i["task_id"] for i in listed] == reference(rows, params, sort)
    as_jsonl = parse_jsonl((await export(client, auth, query, "jsonl")).content)
    assert as_jsonl == listed
    as_csv = parse_csv((await export(client, auth, query, "csv")).content)
    assert as_csv == [as_csv_fields(i) for i in listed]


AWKWARD = [
    "plain",
    "comma, inside",
    'a "quoted" word',
    '"starts and ends with quotes"',
    "line\nbreak",
    "windows\r\nline end",
    "lone\rcarriage return",
    "tab\there",
    "ünïcödé 漢字 and emoji 🧪",
    "=SUM(A1:A2)",
    "trailing space ",
    " ",
    "",
    "\\backslash\\",
    "x" * 250,
]


async def test_awkward_strings_survive_both_formats(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    for i, text in enumerate(AWKWARD):
        r = await client.post(
            "/api/tasks",
            json={
                "task_id": f"awk-{i:02d}",
                "agent_type": "coder",
                "input_message": text,
                "user_id": f"user, {text[:20]}",
                "flow_id": text[:255] or None,
                "model": "claude-haiku-4",
                "metadata": {"why": text},
            },
            headers=auth("agent"),
        )
        assert r.status_code == 201, r.text
    r = await client.patch(
        "/api/tasks/awk-04",
        json={"status": "failed", "error": 'boom,\n"bad"', "input_tokens": 12},
        headers=auth("agent"),
    )
    assert r.status_code == 200, r.text
    listed = await list_walk(client, auth, {})
    assert len(listed) == len(AWKWARD)

    r = await export(client, auth, {}, "jsonl")
    assert r.headers["content-type"] == "application/jsonl"
    assert r.headers["content-disposition"].startswith('attachment; filename="tasks-')
    assert r.headers["content-disposition"].endswith('.jsonl"')
    assert parse_jsonl(r.content) == listed

    r = await export(client, auth, {}, "csv")
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"].endswith('.csv"')
    assert b"\r\n" in r.content
    parsed = parse_csv(r.content)
    assert parsed == [as_csv_fields(i) for i in listed]
    previews = {row["task_id"]: row["input_preview"] for row in parsed}
    for i, text in enumerate(AWKWARD):
        assert previews[f"awk-{i:02d}"] == text[:200]


async def test_an_empty_export_has_the_header_only(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    r = await export(client, auth, {"status": "failed"}, "csv")
    assert r.content == (",".join(EXPORT_FIELDS) + "\r\n").encode()
    r = await export(client, auth, {}, "jsonl")
    assert r.content == b""


async def test_export_refuses_what_the_list_refuses(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    for params in (
        {"format": "xml"},
        {"status": "done"},
        {"sort": "task_id"},
        {"created_after": "yesterday"},
        {"q": "\x00"},
    ):
        r = await client.get("/api/tasks/export", params=params, headers=auth("user"))
        assert r.status_code == 422, (params, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    r = await client.get("/api/tasks/export")
    assert r.status_code == 401
    r = await client.get("/api/tasks/export", headers=auth("agent"))
    assert r.status_code == 403
    r = await client.get("/api/tasks/export", headers=auth("admin"))
    assert r.status_code == 200


async def test_export_is_documented(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    op = schema["paths"]["/api/tasks/export"]["get"]
    names = {p["name"] for p in op["parameters"]}
    listed = {p["name"] for p in schema["paths"]["/api/tasks"]["get"]["parameters"]}
    assert names == (listed - {"page", "per_page", "cursor"}) | {"format"}
    assert set(op["responses"]["200"]["content"]) == {
        "text/csv; charset=utf-8",
        "application/jsonl",
    }
