"""A burst of concurrent writes, then every derived figure checked against brute force."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

from tests.support.conversations import messages, new_conversation, patch_task, post
from tests.support.tokens import Headers


async def _all_tasks(client: httpx.AsyncClient, auth: Headers) -> list[dict[str, Any]]:
    """Every task's summary (it carries status, cost, conversation and parent)."""
    r = await client.get("/api/tasks", params={"per_page": 200}, headers=auth("admin"))
    assert r.json()["total"] <= 200
    return list(r.json()["items"])


async def test_concurrent_burst_keeps_totals_exact(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    rng = random.Random(7)
    convs = [(await new_conversation(client, auth))["conversation_id"] for _ in range(3)]
    roots: list[str] = []
    for cid in convs:
        for i in range(3):
            roots.append(
                (await post(client, auth, cid, content=f"{cid[-4:]}-{i}")).json()["task_id"]
            )
    for task_id in roots[::2]:
        assert (await patch_task(client, auth, task_id, status="running")).status_code == 200
    loose = []
    for i in range(3):
        r = await client.post(
            "/api/tasks",
            json={"task_id": f"loose-{i}", "agent_type": "general", "input_message": "x"},
            headers=auth("agent"),
        )
        assert r.status_code == 201
        loose.append(f"loose-{i}")

    ops: list[Any] = []
    for task_id in roots:
        choice = rng.choice(["complete", "fail", "cost", "cancel"])
        if choice == "complete":
            ops.append(
                patch_task(client, auth, task_id, status="completed", result="r", cost_usd=0.1)
            )
        elif choice == "fail":
            ops.append(patch_task(client, auth, task_id, status="failed", error="e", cost_usd=0.2))
        elif choice == "cost":
            ops.append(patch_task(client, auth, task_id, cost_usd=0.3))
        else:
            ops.append(client.post(f"/api/tasks/{task_id}/cancel", headers=auth("user")))
        ops.append(
            client.post(
                "/api/tasks",
                json={
                    "task_id": f"kid-{task_id}",
                    "agent_type": "general",
                    "input_message": "x",
                    "parent_task_id": task_id,
                },
                headers=auth("agent"),
            )
        )
    for i, task_id in enumerate(loose):
        ops.append(
            client.post(
                f"/api/conversations/{convs[i % 2 + 1]}/tasks",
                json={"task_id": task_id},
                headers=auth("user"),
            )
        )
    ops.append(client.delete(f"/api/conversations/{convs[0]}", headers=auth("user")))
    ops += [post(client, auth, cid, content="more") for cid in convs]
    ops += [
        client.post(
            "/api/tasks/claim", json={"agent_type": "general", "agent": "a"}, headers=auth("agent")
        )
        for _ in range(3)
    ]
    rng.shuffle(ops)
    results = await asyncio.gather(*ops)
    assert all(r.status_code < 500 for r in results), [
        r.text for r in results if r.status_code >= 500
    ]

    # Late costs on every task after the burst.
    tasks = await _all_tasks(client, auth)
    for t in tasks:
        assert (
            await patch_task(client, auth, t["task_id"], cost_usd=0.01 * len(t["task_id"]))
        ).status_code == 200
    by_id = {t["task_id"]: t for t in await _all_tasks(client, auth)}

    assert (
        await client.get(f"/api/conversations/{convs[0]}", headers=auth("user"))
    ).status_code == 404
    assert all(t["conversation_id"] != convs[0] for t in by_id.values())
    for cid in convs[1:]:
        conv = (await client.get(f"/api/conversations/{cid}", headers=auth("user"))).json()
        direct = {tid for tid, t in by_id.items() if t["conversation_id"] == cid}
        counted = set(direct)
        for tid, t in by_id.items():  # descendants by parent_task_id
            parent = t["parent_task_id"]
            while parent is not None and parent not in counted:
                parent = by_id[parent]["parent_task_id"] if parent in tasks else None
            if parent is not None:
                counted.add(tid)
        assert conv["task_count"] == len(counted)
        expected_micros = sum(round(by_id[tid]["cost_usd"] * 1_000_000) for tid in counted)
        assert round(conv["total_cost_usd"] * 1_000_000) == expected_micros
        items = await messages(client, auth, cid)
        assert conv["message_count"] == len(items)
        replies = [m["task_id"] for m in items if m["metadata"].get("kind") == "task_reply"]
        assert len(replies) == len(set(replies))
        ended = {
            tid for tid in direct if by_id[tid]["status"] in ("completed", "failed", "cancelled")
        }
        assert set(replies) == ended
