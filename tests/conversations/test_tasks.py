"""Tasks that answer back: replies exactly once, totals over linked and child tasks."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.support.conversations import (
    get_conv,
    messages,
    new_conversation,
    patch_task,
    post,
    register,
)
from tests.support.env import Backend
from tests.support.tokens import Headers


async def test_chat_round_trip(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth, agent_type="coder"))["conversation_id"]
    r = await post(client, auth, cid, content="Please fix the flaky test")
    assert r.status_code == 201, r.text
    sent = r.json()
    assert sent["role"] == "user"
    task_id = sent["task_id"]
    assert task_id

    r = await client.post(
        "/api/tasks/claim", json={"agent_type": "coder", "agent": "bot-1"}, headers=auth("agent")
    )
    assert r.status_code == 200, r.text
    assert r.json()["task_id"] == task_id
    assert r.json()["status"] == "running"
    r = await client.post(
        f"/api/tasks/{task_id}/output", json={"content": "working..."}, headers=auth("agent")
    )
    assert r.status_code == 200
    assert len(await messages(client, auth, cid)) == 1  # output is not a message

    r = await patch_task(
        client, auth, task_id, status="completed", result="Fixed it.", cost_usd=0.123456
    )
    assert r.status_code == 200, r.text

    items = await messages(client, auth, cid)
    assert [(m["role"], m["content"], m["task_id"]) for m in items] == [
        ("user", "Please fix the flaky test", task_id),
        ("assistant", "Fixed it.", task_id),
    ]
    assert items[1]["metadata"]["task_status"] == "completed"
    conv = await get_conv(client, auth, cid)
    assert conv["message_count"] == 2
    assert conv["task_count"] == 1
    assert conv["total_cost_usd"] == 0.123456
    assert conv["updated_at"] >= items[1]["created_at"]

    # Retried terminal update and late metrics: no second reply; cost follows.
    for _ in range(2):
        r = await patch_task(client, auth, task_id, status="completed", result="Fixed it.")
        assert r.status_code == 200
    r = await patch_task(client, auth, task_id, cost_usd=0.5, result="Fixed it, really.")
    assert r.status_code == 200
    assert len(await messages(client, auth, cid)) == 2
    conv = await get_conv(client, auth, cid)
    assert conv["total_cost_usd"] == 0.5
    assert conv["message_count"] == 2


REPLIES: list[tuple[list[str], dict[str, Any], str, str]] = [
    (["running", "failed"], {"error": "boom"}, "system", "boom"),
    (["failed"], {}, "system", "The task failed."),
    (["cancelled"], {}, "system", "The task was cancelled."),
    (["running", "completed"], {}, "assistant", "The task completed without a result."),
    (["running", "cancelled"], {"error": "stopped by user"}, "system", "stopped by user"),
]


async def test_reply_kinds(client: httpx.AsyncClient, auth: Headers) -> None:
    for moves, body, role, content in REPLIES:
        cid = (await new_conversation(client, auth))["conversation_id"]
        task_id = (await post(client, auth, cid, content="do it")).json()["task_id"]
        for i, status in enumerate(moves):
            extra = body if i == len(moves) - 1 else {}
            r = await patch_task(client, auth, task_id, status=status, **extra)
            assert r.status_code == 200, r.text
        items = await messages(client, auth, cid)
        assert [(m["role"], m["content"]) for m in items[1:]] == [(role, content)], moves
        assert items[1]["metadata"] == {"kind": "task_reply", "task_status": moves[-1]}


async def test_user_cancel_replies_once(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    task_id = (await post(client, auth, cid, content="do it")).json()["task_id"]
    r = await client.post(f"/api/tasks/{task_id}/cancel", headers=auth("user"))
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert (
        await client.post(f"/api/tasks/{task_id}/cancel", headers=auth("user"))
    ).status_code == 409
    items = await messages(client, auth, cid)
    assert [m["role"] for m in items] == ["user", "system"]


async def test_concurrent_terminal_updates_reply_once(
    client: httpx.AsyncClient, auth: Headers, backend: Backend
) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    ids = []
    for i in range(3):
        r = await post(client, auth, cid, content=f"job {i}")
        ids.append(r.json()["task_id"])
        assert (await patch_task(client, auth, ids[-1], status="running")).status_code == 200
    calls = [
        patch_task(client, auth, task_id, status="completed", result=f"done {task_id}")
        for task_id in ids
        for _ in range(4)
    ]
    results = await asyncio.gather(*calls)
    # Racing writers either win or see the repeated status as a no-op; never a 5xx.
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    items = await messages(client, auth, cid)
    replies = [m for m in items if m["role"] == "assistant"]
    assert sorted(m["task_id"] for m in replies) == sorted(ids)
    assert all(m["content"] == f"done {m['task_id']}" for m in replies)
    conv = await get_conv(client, auth, cid)
    assert conv["message_count"] == 6
    assert conv["task_count"] == 3


async def test_concurrent_mixed_terminal_updates(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    task_id = (await post(client, auth, cid, content="race")).json()["task_id"]
    assert (await patch_task(client, auth, task_id, status="running")).status_code == 200
    results = await asyncio.gather(
        patch_task(client, auth, task_id, status="completed", result="ok"),
        patch_task(client, auth, task_id, status="failed", error="no"),
        client.post(f"/api/tasks/{task_id}/cancel", headers=auth("user")),
        patch_task(client, auth, task_id, status="completed", result="ok"),
    )
    assert all(r.status_code in (200, 409) for r in results), [r.text for r in results]
    items = await messages(client, auth, cid)
    assert len(items) == 2
    final = (await client.get(f"/api/tasks/{task_id}", headers=auth("user"))).json()["status"]
    assert items[1]["metadata"]["task_status"] == final


async def test_children_and_late_costs(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    root = (await post(client, auth, cid, content="plan")).json()["task_id"]
    await register(client, auth, "child-1", parent_task_id=root)
    await register(client, auth, "grandchild", parent_task_id="child-1")
    await register(client, auth, "unrelated")
    await patch_task(client, auth, root, cost_usd=0.1)
    await patch_task(client, auth, "child-1", cost_usd=0.2)
    await patch_task(client, auth, "grandchild", cost_usd=0.3)
    await patch_task(client, auth, "unrelated", cost_usd=7)
    conv = await get_conv(client, auth, cid)
    assert conv["task_count"] == 3
    assert conv["total_cost_usd"] == 0.6

    # Children end without answering in the chat; the linked task answers once.
    for task_id in ("grandchild", "child-1", root):
        assert (await patch_task(client, auth, task_id, status="running")).status_code == 200
        r = await patch_task(client, auth, task_id, status="completed", result=f"r-{task_id}")
        assert r.status_code == 200
    items = await messages(client, auth, cid)
    assert [(m["role"], m["content"]) for m in items] == [
        ("user", "plan"),
        ("assistant", f"r-{root}"),
    ]
    # A cost reported after the end still counts, exactly.
    await patch_task(client, auth, "grandchild", cost_usd=1.000001)
    await patch_task(client, auth, "child-1", cost_usd=0)
    conv = await get_conv(client, auth, cid)
    assert conv["total_cost_usd"] == 1.100001
    assert conv["task_count"] == 3
    assert conv["message_count"] == 2


async def test_output_of_linked_and_child_tasks(
    backend: Backend, client: httpx.AsyncClient, auth: Headers
) -> None:
    """Appends to a conversation's tasks (linked, or counted as a descendant) keep the
    conversation's figures; on PostgreSQL a descendant, which looks plain from its own
    row, is tried alone once at most and then goes through the transaction."""
    from dashboard_api.services.tasks import output as tasks_service

    cid = (await new_conversation(client, auth))["conversation_id"]
    root = (await post(client, auth, cid, content="plan")).json()["task_id"]
    await register(client, auth, "out-child", parent_task_id=root, status="running")
    await register(client, auth, "out-plain", status="running")
    assert (await patch_task(client, auth, root, status="running")).status_code == 200
    for task_id in (root, "out-child", "out-plain"):
        for k in range(4):
            r = await client.post(
                f"/api/tasks/{task_id}/output",
                json={"chunks": [{"content": f"{k}.a"}, {"content": f"{k}.b"}]},
                headers=auth("agent"),
            )
            assert r.status_code == 200, r.text
            assert r.json()["first_seq"] == 2 * k + 1
        r = await client.get(f"/api/tasks/{task_id}/logs/full", headers=auth("user"))
        assert [c["seq"] for c in r.json()["chunks"]] == list(range(1, 9))
    conv = await get_conv(client, auth, cid)
    assert conv["task_count"] == 2
    if backend.name == "postgres":
        assert tasks_service._ALONE.get(root) is None  # linked: never tried
        assert tasks_service._ALONE.get("out-child") is False  # tried once, refused
        assert tasks_service._ALONE.get("out-plain") is True


async def test_computed_costs_follow_tokens(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    root = (await post(client, auth, cid, content="x")).json()["task_id"]
    r = await patch_task(client, auth, root, model="claude-sonnet-4", input_tokens=1_000_000)
    assert r.json()["cost_usd"] == 3
    await register(client, auth, "kid", parent_task_id=root, model="claude-haiku-4")
    await patch_task(client, auth, "kid", output_tokens=1_000_000)
    conv = await get_conv(client, auth, cid)
    assert conv["total_cost_usd"] == 8
    tasks = (
        await client.get("/api/tasks", params={"conversation_id": cid}, headers=auth("user"))
    ).json()
    assert [t["task_id"] for t in tasks["items"]] == [root]


async def test_link_existing_tasks(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    await register(client, auth, "ext")
    await register(client, auth, "ext-child", parent_task_id="ext")
    await patch_task(client, auth, "ext", cost_usd=1.5)
    await patch_task(client, auth, "ext-child", cost_usd=0.25)
    url = f"/api/conversations/{cid}/tasks"
    r = await client.post(url, json={"task_id": "ext"}, headers=auth("user"))
    assert r.status_code == 204, r.text
    task = (await client.get("/api/tasks/ext", headers=auth("user"))).json()
    assert task["conversation_id"] == cid
    conv = await get_conv(client, auth, cid)
    assert (conv["task_count"], conv["total_cost_usd"]) == (2, 1.75)
    # Linking again is a no-op.
    assert (
        await client.post(url, json={"task_id": "ext"}, headers=auth("user"))
    ).status_code == 204
    assert (await get_conv(client, auth, cid))["task_count"] == 2

    # The linked task's end answers in the conversation.
    await patch_task(client, auth, "ext", status="running")
    await patch_task(client, auth, "ext", status="completed", result="linked result")
    items = await messages(client, auth, cid)
    assert [(m["role"], m["content"]) for m in items] == [("assistant", "linked result")]

    # A task counted elsewhere is a conflict; an already-ended task answers at once.
    second = (await new_conversation(client, auth))["conversation_id"]
    r = await client.post(
        f"/api/conversations/{second}/tasks", json={"task_id": "ext"}, headers=auth("user")
    )
    assert r.status_code == 409
    await register(client, auth, "done-before")
    await patch_task(client, auth, "done-before", status="failed", error="it broke")
    r = await client.post(
        f"/api/conversations/{second}/tasks", json={"task_id": "done-before"}, headers=auth("user")
    )
    assert r.status_code == 204
    items = await messages(client, auth, second)
    assert [(m["role"], m["content"], m["task_id"]) for m in items] == [
        ("system", "it broke", "done-before")
    ]
    assert (await get_conv(client, auth, second))["message_count"] == 1


async def test_registered_with_conversation_id(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    await register(client, auth, "producer-task", conversation_id=cid, status="running")
    await register(client, auth, "dangling", conversation_id="not-a-conversation")
    conv = await get_conv(client, auth, cid)
    assert conv["task_count"] == 1
    await patch_task(client, auth, "producer-task", status="completed", result="from producer")
    await patch_task(client, auth, "dangling", status="failed")
    items = await messages(client, auth, cid)
    assert [m["content"] for m in items] == ["from producer"]


async def test_delete_unlinks_tasks(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    task_id = (await post(client, auth, cid, content="x")).json()["task_id"]
    await register(client, auth, "kid", parent_task_id=task_id)
    r = await client.delete(f"/api/conversations/{cid}", headers=auth("user"))
    assert r.status_code == 204
    task = (await client.get(f"/api/tasks/{task_id}", headers=auth("user"))).json()
    assert task["conversation_id"] is None
    assert (await client.get("/api/tasks/kid", headers=auth("user"))).status_code == 200
    # The task lives on; ending it answers nowhere and fails nothing.
    assert (await patch_task(client, auth, task_id, status="running")).status_code == 200
    assert (await patch_task(client, auth, task_id, status="completed")).status_code == 200
    r = await client.get(f"/api/conversations/{cid}/messages", headers=auth("user"))
    assert r.status_code == 404
    # Unlinked tasks may be linked to another conversation.
    other = (await new_conversation(client, auth))["conversation_id"]
    r = await client.post(
        f"/api/conversations/{other}/tasks", json={"task_id": task_id}, headers=auth("user")
    )
    assert r.status_code == 204
    conv = await get_conv(client, auth, other)
    assert (conv["task_count"], conv["message_count"]) == (2, 1)


async def test_delete_racing_task_writes(client: httpx.AsyncClient, auth: Headers) -> None:
    """Deleting while linked tasks end, children register and messages arrive: no 5xx."""
    cid = (await new_conversation(client, auth))["conversation_id"]
    ids = [(await post(client, auth, cid, content=f"j{i}")).json()["task_id"] for i in range(4)]
    for task_id in ids:
        assert (await patch_task(client, auth, task_id, status="running")).status_code == 200
    calls = [
        *(patch_task(client, auth, t, status="completed", result="r", cost_usd=1) for t in ids),
        client.delete(f"/api/conversations/{cid}", headers=auth("user")),
        *(
            client.post(
                "/api/tasks",
                json={
                    "task_id": f"kid-{i}",
                    "agent_type": "coder",
                    "input_message": "x",
                    "parent_task_id": ids[i],
                },
                headers=auth("agent"),
            )
            for i in range(4)
        ),
        post(client, auth, cid, content="late"),
    ]
    results = await asyncio.gather(*calls)
    assert all(r.status_code < 500 for r in results), [r.text for r in results]
    assert results[4].status_code == 204
    assert all(r.status_code == 200 for r in results[:4])
    assert all(r.status_code == 201 for r in results[5:9])
    assert results[9].status_code in (201, 404)
    r = await client.get(f"/api/conversations/{cid}", headers=auth("user"))
    assert r.status_code == 404
    tasks = (await client.get("/api/tasks", params={"per_page": 200}, headers=auth("user"))).json()
    assert all(t["conversation_id"] is None for t in tasks["items"])


async def test_appends_racing_a_delete_leave_no_link(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    """Output appended to linked tasks while their conversation is deleted: a linked
    task's appends take the transaction with the hooks (which unlink a task the delete
    had to skip), so none is left pointing at the deleted conversation."""
    cid = (await new_conversation(client, auth))["conversation_id"]
    ids = [(await post(client, auth, cid, content=f"a{i}")).json()["task_id"] for i in range(3)]
    for task_id in ids:
        assert (await patch_task(client, auth, task_id, status="running")).status_code == 200

    def append(task_id: str, text: str) -> Any:
        return client.post(
            f"/api/tasks/{task_id}/output", json={"content": text}, headers=auth("agent")
        )

    for task_id in ids:  # the first output (the long way for every task)
        assert (await append(task_id, "0")).status_code == 200
    calls = [
        *(append(t, f"{k}") for k in range(1, 6) for t in ids),
        client.delete(f"/api/conversations/{cid}", headers=auth("user")),
        *(append(t, f"{k}") for k in range(6, 9) for t in ids),
    ]
    results = await asyncio.gather(*calls)
    assert all(r.status_code < 500 for r in results), [r.text for r in results]
    assert results[15].status_code == 204
    for task_id in ids:
        r = await client.get(f"/api/tasks/{task_id}/logs/full", headers=auth("user"))
        assert r.status_code == 200
        log = r.json()
        assert log["task"]["conversation_id"] is None
        assert [c["seq"] for c in log["chunks"]] == list(range(1, 10))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # the ingress needs Redis
async def test_terminal_update_through_redis_ingress(
    app: Any, client: httpx.AsyncClient, auth: Headers, backend: Backend
) -> None:
    """docs/api.md §11: a status published to Redis (twice) answers the conversation once."""
    import orjson
    import redis.asyncio as aioredis

    from tests.support.env import REDIS_URL

    cid = (await new_conversation(client, auth))["conversation_id"]
    task_id = (await post(client, auth, cid, content="via redis")).json()["task_id"]
    assert (await patch_task(client, auth, task_id, status="running")).status_code == 200
    ingress = app.state.ctx.ingress
    await asyncio.wait_for(ingress.leader_event.wait(), 30)
    channel = f"{app.state.ctx.settings.redis_ingress_prefix}task:{task_id}:status"
    redis = aioredis.from_url(REDIS_URL)
    try:
        body = orjson.dumps({"status": "completed", "result": "from redis", "cost_usd": 0.25})
        for _ in range(2):
            await redis.publish(channel, body)
        # The ingress stores messages in the order it receives them: a marker after both.
        await redis.publish(channel, orjson.dumps({"metadata": {"done": 1}}))
        for _ in range(600):
            task = (await client.get(f"/api/tasks/{task_id}", headers=auth("user"))).json()
            if task["metadata"] == {"done": 1}:
                break
            await asyncio.sleep(0.05)
        assert task["metadata"] == {"done": 1}
    finally:
        await redis.aclose()
    items = await messages(client, auth, cid)
    assert [(m["role"], m["content"]) for m in items] == [
        ("user", "via redis"),
        ("assistant", "from redis"),
    ]
    conv = await get_conv(client, auth, cid)
    assert (conv["message_count"], conv["task_count"], conv["total_cost_usd"]) == (2, 1, 0.25)
