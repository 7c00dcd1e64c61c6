"""Malformed requests: each is a 4xx problem document, never a 5xx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx

from tests.support.env import Backend
from tests.support.tasks import running_app

Headers = Callable[[str], dict[str, str]]
JSON = {"Content-Type": "application/json"}
OK_TASK = '{"agent_type": "coder", "input_message": "x"}'

# (name, method, path, raw body or None, expected status)
CASES: list[tuple[str, str, str, str | bytes | None, int]] = [
    ("bad json", "POST", "/api/tasks", '{"agent_type": "coder", ', 422),
    ("not an object", "POST", "/api/tasks", '["coder"]', 422),
    ("empty body", "POST", "/api/tasks", "", 422),
    ("null body", "POST", "/api/tasks", "null", 422),
    ("not utf-8", "POST", "/api/tasks", b'{"agent_type": "\xff\xfe"}', 400),
    ("missing field", "POST", "/api/tasks", '{"agent_type": "coder"}', 422),
    ("wrong type", "POST", "/api/tasks", '{"agent_type": 5, "input_message": "x"}', 422),
    ("message not str", "POST", "/api/tasks", '{"agent_type": "c", "input_message": []}', 422),
    ("unknown field", "POST", "/api/tasks", OK_TASK[:-1] + ', "colour": "red"}', 422),
    ("empty task id", "POST", "/api/tasks", OK_TASK[:-1] + ', "task_id": ""}', 422),
    ("bad id chars", "POST", "/api/tasks", OK_TASK[:-1] + ', "task_id": "a b/c"}', 422),
    ("256-char id", "POST", "/api/tasks", OK_TASK[:-1] + f', "task_id": "{"a" * 256}"}}', 422),
    ("bad slug", "POST", "/api/tasks", '{"agent_type": "Coder X", "input_message": "x"}', 422),
    ("bad source", "POST", "/api/tasks", OK_TASK[:-1] + ', "source": "GitHub!"}', 422),
    ("bad initial status", "POST", "/api/tasks", OK_TASK[:-1] + ', "status": "completed"}', 422),
    ("bad created_at", "POST", "/api/tasks", OK_TASK[:-1] + ', "created_at": "soon"}', 422),
    (
        "created_at overflow",
        "POST",
        "/api/tasks",
        OK_TASK[:-1] + ', "created_at": "0001-01-01T00:00:00+05:00"}',
        422,
    ),
    ("metadata not object", "POST", "/api/tasks", OK_TASK[:-1] + ', "metadata": [1]}', 422),
    (
        "NUL in message",
        "POST",
        "/api/tasks",
        '{"agent_type": "c", "input_message": "a\\u0000"}',
        422,
    ),
    (
        "NUL in metadata",
        "POST",
        "/api/tasks",
        OK_TASK[:-1] + ', "metadata": {"k": ["\\u0000"]}}',
        422,
    ),
    (
        "NUL in metadata key",
        "POST",
        "/api/tasks",
        OK_TASK[:-1] + ', "metadata": {"\\u0000": 1}}',
        422,
    ),
    (
        "lone surrogate",
        "POST",
        "/api/tasks",
        '{"agent_type": "c", "input_message": "\\ud800"}',
        422,
    ),
    ("NUL in user_id", "POST", "/api/tasks", OK_TASK[:-1] + ', "user_id": "\\u0000"}', 422),
    ("negative tokens", "PATCH", "/api/tasks/t1", '{"input_tokens": -1}', 422),
    ("float tokens", "PATCH", "/api/tasks/t1", '{"output_tokens": 1.5}', 422),
    ("huge tokens", "PATCH", "/api/tasks/t1", '{"output_tokens": 1e30}', 422),
    ("huge int tokens", "PATCH", "/api/tasks/t1", '{"output_tokens": ' + "9" * 40 + "}", 422),
    ("NaN cost", "PATCH", "/api/tasks/t1", '{"cost_usd": NaN}', 422),
    ("Infinity cost", "PATCH", "/api/tasks/t1", '{"cost_usd": Infinity}', 422),
    ("overflow cost", "PATCH", "/api/tasks/t1", '{"cost_usd": 1e400}', 422),
    ("negative cost", "PATCH", "/api/tasks/t1", '{"cost_usd": -0.01}', 422),
    ("string cost", "PATCH", "/api/tasks/t1", '{"cost_usd": "free"}', 422),
    ("unknown status", "PATCH", "/api/tasks/t1", '{"status": "paused"}', 422),
    ("unknown patch field", "PATCH", "/api/tasks/t1", '{"priority": 1}', 422),
    ("NUL in result", "PATCH", "/api/tasks/t1", '{"result": "\\u0000"}', 422),
    ("NUL in patch metadata", "PATCH", "/api/tasks/t1", '{"metadata": {"a": "\\u0000"}}', 422),
    ("bad path id", "PATCH", "/api/tasks/a%20b", '{"result": "x"}', 422),
    ("256-char path id", "GET", "/api/tasks/" + "a" * 256, None, 422),
    ("both output forms", "POST", "/api/tasks/t1/output", '{"content": "a", "chunks": []}', 422),
    ("neither output form", "POST", "/api/tasks/t1/output", "{}", 422),
    ("empty chunks", "POST", "/api/tasks/t1/output", '{"chunks": []}', 422),
    ("bad stream", "POST", "/api/tasks/t1/output", '{"content": "a", "stream": "tty"}', 422),
    (
        "stream beside chunks",
        "POST",
        "/api/tasks/t1/output",
        '{"stream": "stdout", "chunks": [{"content": "a"}]}',
        422,
    ),
    ("chunk not object", "POST", "/api/tasks/t1/output", '{"chunks": ["a"]}', 422),
    ("NUL in output", "POST", "/api/tasks/t1/output", '{"content": "a\\u0000b"}', 422),
    ("surrogate in output", "POST", "/api/tasks/t1/output", '{"content": "\\udc80"}', 422),
    ("claim without agent", "POST", "/api/tasks/claim", '{"agent_type": "coder"}', 422),
    ("claim empty list", "POST", "/api/tasks/claim", '{"agent_type": [], "agent": "a"}', 422),
    ("claim bad type", "POST", "/api/tasks/claim", '{"agent_type": 3, "agent": "a"}', 422),
    ("claim empty agent", "POST", "/api/tasks/claim", '{"agent_type": "c", "agent": ""}', 422),
    ("per_page 0", "GET", "/api/tasks?per_page=0", None, 422),
    ("per_page 201", "GET", "/api/tasks?per_page=201", None, 422),
    ("unknown sort", "GET", "/api/tasks?sort=input_message", None, 422),
    ("unknown status filter", "GET", "/api/tasks?status=done", None, 422),
    ("bad timestamp filter", "GET", "/api/tasks?created_after=2026-02-30", None, 422),
    ("page and cursor", "GET", "/api/tasks?page=1&cursor=abc", None, 422),
    ("unknown route", "GET", "/api/tasks/t1/nothing", None, 404),
    ("wrong method", "PUT", "/api/tasks/t1", '{"result": "x"}', 405),
]


async def test_malformed_requests(client: httpx.AsyncClient, auth: Headers) -> None:
    """One app per backend for the whole table (an app per case would be slow)."""
    r = await client.post(
        "/api/tasks",
        json={"task_id": "t1", "agent_type": "coder", "input_message": "x"},
        headers=auth("agent"),
    )
    assert r.status_code == 201
    failures = []
    for name, method, path, body, expected in CASES:
        r = await client.request(method, path, content=body, headers={**auth("admin"), **JSON})
        problem = r.json() if r.headers.get("content-type", "").endswith("json") else {}
        ok = (
            r.status_code == expected
            and r.headers["content-type"].startswith("application/problem+json")
            and {"type", "title", "status", "detail"} <= set(problem)
            and problem["status"] == expected
            and (expected != 422 or bool(problem.get("errors")))
        )
        if not ok:
            failures.append((name, r.status_code, r.text[:200]))
    assert failures == []
    # Nothing was changed by the refused requests, and nothing new was created.
    task = (await client.get("/api/tasks/t1", headers=auth("user"))).json()
    assert task["status"] == "queued"
    assert task["output_seq"] == 0
    assert task["metadata"] == {}
    assert task["updated_at"] == task["created_at"]
    assert (await client.get("/api/tasks", headers=auth("user"))).json()["total"] == 1


async def test_huge_bodies_are_413(backend: Backend) -> None:
    async with running_app(backend.settings(max_body_bytes=4096)) as (client, auth):
        big = '{"agent_type": "c", "input_message": "' + "x" * 5000 + '"}'
        r = await client.post("/api/tasks", content=big, headers={**auth("agent"), **JSON})
        assert r.status_code == 413
        assert r.headers["content-type"].startswith("application/problem+json")

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1000

        # No Content-Length (chunked): refused while it streams in.
        r = await client.post("/api/tasks", content=stream(), headers={**auth("agent"), **JSON})
        assert r.status_code == 413, r.text
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_wrong_content_type_is_4xx(client: httpx.AsyncClient, auth: Headers) -> None:
    r = await client.post(
        "/api/tasks",
        content=OK_TASK,
        headers={**auth("agent"), "Content-Type": "text/plain"},
    )
    assert 400 <= r.status_code < 500
    assert r.headers["content-type"].startswith("application/problem+json")
