"""Output: gap-free seqs under concurrency, batches, the cap, limits, logs, durability."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.support.env import Backend
from tests.support.tasks import MIB, append, full_log, new_task, running_app
from tests.support.tokens import Headers


async def test_concurrent_appends_are_gap_free(client: httpx.AsyncClient, auth: Headers) -> None:
    await new_task(client, auth)
    results = await asyncio.gather(
        *(append(client, auth, {"content": f"line {i}\n"}) for i in range(50))
    )
    seqs = sorted(r.json()["first_seq"] for r in results)
    assert seqs == list(range(1, 51))
    for r in results:
        assert r.json()["first_seq"] == r.json()["last_seq"]
    log = await full_log(client, auth)
    assert [c["seq"] for c in log["chunks"]] == list(range(1, 51))
    assert log["last_seq"] == 50
    assert log["task"]["output_seq"] == 50
    # Each chunk is stored under the seq its append was told.
    by_seq = {c["seq"]: c["content"] for c in log["chunks"]}
    for r, i in zip(results, range(50), strict=True):
        assert by_seq[r.json()["first_seq"]] == f"line {i}\n"


async def test_concurrent_batches_are_contiguous(client: httpx.AsyncClient, auth: Headers) -> None:
    await new_task(client, auth)
    batches = [{"chunks": [{"content": f"{b}.{i}"} for i in range(5)]} for b in range(10)]
    results = await asyncio.gather(*(append(client, auth, b) for b in batches))
    spans = sorted((r.json()["first_seq"], r.json()["last_seq"]) for r in results)
    assert spans == [(1 + 5 * k, 5 + 5 * k) for k in range(10)]
    log = await full_log(client, auth)
    by_seq = {c["seq"]: c["content"] for c in log["chunks"]}
    for r, b in zip(results, range(10), strict=True):
        first = r.json()["first_seq"]
        assert [by_seq[first + i] for i in range(5)] == [f"{b}.{i}" for i in range(5)]


async def test_batched_form_and_streams(client: httpx.AsyncClient, auth: Headers) -> None:
    await new_task(client, auth)
    r = await append(client, auth, {"content": "a", "stream": "stderr"})
    assert r.json() == {"first_seq": 1, "last_seq": 1, "truncated": False}
    r = await append(
        client,
        auth,
        {"chunks": [{"content": "b"}, {"content": "c", "stream": "system"}, {"content": ""}]},
    )
    assert r.json() == {"first_seq": 2, "last_seq": 4, "truncated": False}
    log = await full_log(client, auth)
    assert [(c["seq"], c["stream"], c["content"]) for c in log["chunks"]] == [
        (1, "stderr", "a"),
        (2, "stdout", "b"),
        (3, "system", "c"),
        (4, "stdout", ""),
    ]
    assert log["output"] == "abc"
    assert log["truncated"] is False
    for c in log["chunks"]:
        assert c["created_at"].endswith("Z")


async def test_log_cap(backend: Backend) -> None:
    async with running_app(backend.settings(output_cap_bytes=10)) as (client, auth):
        await new_task(client, auth)
        r = await append(client, auth, {"content": "12345"})
        assert r.json() == {"first_seq": 1, "last_seq": 1, "truncated": False}
        # 5 bytes fit: "abcd" and half of "é" (2 bytes); the cut falls before the "é".
        r = await append(client, auth, {"chunks": [{"content": "abcdé"}, {"content": "zz"}]})
        assert r.json() == {"first_seq": 2, "last_seq": 2, "truncated": True}
        r = await append(client, auth, {"content": "more"})
        assert r.json() == {"first_seq": None, "last_seq": 2, "truncated": True}
        log = await full_log(client, auth)
        assert log["output"] == "12345abcd"
        assert log["truncated"] is True
        assert log["last_seq"] == 2
        assert log["task"]["output_truncated"] is True

        # Exactly at the cap: stored whole, not truncated; the next byte is.
        await new_task(client, auth, "o2")
        r = await append(client, auth, {"content": "0123456789"}, task_id="o2")
        assert r.json() == {"first_seq": 1, "last_seq": 1, "truncated": False}
        r = await append(client, auth, {"content": "x"}, task_id="o2")
        assert r.json() == {"first_seq": None, "last_seq": 1, "truncated": True}
        summary = (await client.get("/api/tasks", headers=auth("user"))).json()["items"]
        assert {s["task_id"]: s["output_truncated"] for s in summary} == {"o1": True, "o2": True}


async def test_limits(client: httpx.AsyncClient, auth: Headers) -> None:
    await new_task(client, auth)
    r = await append(client, auth, {"content": "x" * (MIB + 1)})
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await append(
        client, auth, {"chunks": [{"content": "a"}, {"content": "é" * (MIB // 2 + 1)}]}
    )
    assert r.status_code == 413
    r = await append(client, auth, {"content": "x" * MIB})
    assert r.status_code == 200
    r = await append(client, auth, {"chunks": [{"content": "c"}] * 1001})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await append(client, auth, {"chunks": [{"content": "c"}] * 1000})
    assert r.status_code == 200
    assert r.json() == {"first_seq": 2, "last_seq": 1001, "truncated": False}
    # Nothing of a refused request was stored.
    log = await full_log(client, auth, after_seq=0)
    assert log["last_seq"] == 1001


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
async def test_output_to_terminal_task_is_409(
    client: httpx.AsyncClient, auth: Headers, status: str
) -> None:
    await new_task(client, auth)
    if status == "completed":
        await client.patch("/api/tasks/o1", json={"status": "running"}, headers=auth("agent"))
    await client.patch("/api/tasks/o1", json={"status": status}, headers=auth("agent"))
    r = await append(client, auth, {"content": "late"})
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_full_log_forms(client: httpx.AsyncClient, auth: Headers) -> None:
    await new_task(client, auth)
    await append(client, auth, {"chunks": [{"content": f"{i}-ü\n"} for i in range(1, 6)]})
    log = await full_log(client, auth, after_seq=3)
    assert [c["seq"] for c in log["chunks"]] == [4, 5]
    assert log["output"] == "4-ü\n5-ü\n"
    assert log["last_seq"] == 5
    assert (await full_log(client, auth, after_seq=5))["chunks"] == []
    assert (await full_log(client, auth, after_seq=99))["output"] == ""

    r = await client.get("/api/tasks/o1/logs/full?format=text", headers=auth("user"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "".join(f"{i}-ü\n" for i in range(1, 6))
    r = await client.get("/api/tasks/o1/logs/full?format=text&after_seq=4", headers=auth("user"))
    assert r.text == "5-ü\n"
    r = await client.get(
        "/api/tasks/o1/logs/full", headers={**auth("user"), "Accept": "text/plain"}
    )
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text.startswith("1-ü\n")
    r = await client.get(
        "/api/tasks/o1/logs/full", headers={**auth("user"), "Accept": "application/json"}
    )
    assert r.headers["content-type"].startswith("application/json")
    r = await client.get(
        "/api/tasks/o1/logs/full?format=json", headers={**auth("user"), "Accept": "text/plain"}
    )
    assert r.headers["content-type"].startswith("application/json")
    for bad in ("format=xml", "after_seq=-1", "after_seq=x", "after_seq=2147483648"):
        r = await client.get(f"/api/tasks/o1/logs/full?{bad}", headers=auth("user"))
        assert r.status_code == 422, (bad, r.text)
    r = await client.get("/api/tasks/o1/logs/full?after_seq=2147483647", headers=auth("user"))
    assert r.status_code == 200


# --- durability ---------------------------------------------------------------------------


async def test_acknowledged_writes_survive_a_restart(backend: Backend) -> None:
    settings = backend.settings()
    async with running_app(settings) as (client, auth):
        await new_task(client, auth, "dur")
        await client.patch("/api/tasks/dur", json={"status": "running"}, headers=auth("agent"))
        acked = await asyncio.gather(
            *(append(client, auth, {"content": f"{i};"}, task_id="dur") for i in range(20))
        )
        assert all(r.status_code == 200 for r in acked)
        before = await full_log(client, auth, "dur")
    async with running_app(settings) as (client, auth):
        after = await full_log(client, auth, "dur")
        assert after["chunks"] == before["chunks"]
        assert after["task"] == before["task"]
        assert [c["seq"] for c in after["chunks"]] == list(range(1, 21))
        # Numbering continues where it stopped.
        r = await append(client, auth, {"content": "next"}, task_id="dur")
        assert r.json()["first_seq"] == 21


async def test_output_events(app: FastAPI, client: httpx.AsyncClient, auth: Headers) -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    async def publisher(batch: Any) -> None:
        events.extend(batch)

    await new_task(client, auth)
    app.state.ctx.db.publisher = publisher
    await append(client, auth, {"chunks": [{"content": "a"}, {"content": "b", "stream": "stderr"}]})
    out = [p for ch, p in events if ch == "task:o1" and p["type"] == "task_output"]
    assert [(p["seq"], p["stream"], p["content"]) for p in out] == [
        (1, "stdout", "a"),
        (2, "stderr", "b"),
    ]
    # A refused append publishes nothing.
    events.clear()
    await append(client, auth, {"content": "x" * (MIB + 1)})
    assert events == []


# --- the one-statement append (a task that already has output, a log with room) ---------


async def test_later_appends_publish_the_same_events(
    app: FastAPI, client: httpx.AsyncClient, auth: Headers
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []

    async def publisher(batch: Any) -> None:
        events.extend(batch)

    await new_task(client, auth)
    app.state.ctx.db.publisher = publisher
    await append(client, auth, {"content": "first"})
    r = await append(
        client, auth, {"chunks": [{"content": "a"}, {"content": "é", "stream": "system"}]}
    )
    assert r.json() == {"first_seq": 2, "last_seq": 3, "truncated": False}
    out = [p for ch, p in events if ch == "task:o1" and p["type"] == "task_output"]
    assert [(p["seq"], p["stream"], p["content"]) for p in out] == [
        (1, "stdout", "first"),
        (2, "stdout", "a"),
        (3, "system", "é"),
    ]
    assert out[1]["created_at"] == out[2]["created_at"]
    assert set(out[1]) == {"type", "task_id", "seq", "stream", "content", "created_at"}
    # Output appends publish no task_status, whichever path stores them.
    assert [p["type"] for ch, p in events if ch == "tasks"] == []
    log = await full_log(client, auth)
    assert log["task"]["output_seq"] == 3
    assert log["task"]["updated_at"] == out[2]["created_at"]


async def test_concurrent_batches_after_first_output_are_contiguous(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    await new_task(client, auth)
    await append(client, auth, {"content": "start"})
    batches = [{"chunks": [{"content": f"{b}.{i}"} for i in range(5)]} for b in range(20)]
    results = await asyncio.gather(*(append(client, auth, b) for b in batches))
    spans = sorted((r.json()["first_seq"], r.json()["last_seq"]) for r in results)
    assert spans == [(2 + 5 * k, 6 + 5 * k) for k in range(20)]
    log = await full_log(client, auth)
    assert [c["seq"] for c in log["chunks"]] == list(range(1, 102))
    by_seq = {c["seq"]: c["content"] for c in log["chunks"]}
    for r, b in zip(results, range(20), strict=True):
        first = r.json()["first_seq"]
        assert [by_seq[first + i] for i in range(5)] == [f"{b}.{i}" for i in range(5)]


async def test_concurrent_appends_across_the_cap(backend: Backend) -> None:
    async with running_app(backend.settings(output_cap_bytes=100)) as (client, auth):
        await new_task(client, auth)
        await append(client, auth, {"content": "0123456789"})
        results = await asyncio.gather(
            *(append(client, auth, {"chunks": [{"content": "abcdefg"}] * 2}) for _ in range(12))
        )
        bodies = [r.json() for r in results]
        assert all(r.status_code == 200 for r in results)
        stored = sorted(
            (b["first_seq"], b["last_seq"]) for b in bodies if b["first_seq"] is not None
        )
        # Gap-free from 2, and only the last stored append may have been cut.
        assert [s for s, _ in stored] == [2] + [e + 1 for _, e in stored[:-1]]
        log = await full_log(client, auth)
        assert [c["seq"] for c in log["chunks"]] == list(range(1, stored[-1][1] + 1))
        assert len(log["output"].encode()) == 100
        assert log["truncated"] is True
        assert log["task"]["output_seq"] == stored[-1][1]
        assert sum(b["truncated"] for b in bodies) >= 1
        assert all(b["truncated"] for b in bodies if b["first_seq"] is None)
