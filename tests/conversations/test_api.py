"""Conversation CRUD, validation and per-user isolation on both backends."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.conversations import messages, new_conversation, post, register
from tests.support.tokens import Headers


async def test_create_get_patch_list_delete(client: httpx.AsyncClient, auth: Headers) -> None:
    conv = await new_conversation(client, auth)
    assert conv["title"] == "New conversation"
    assert conv["user_id"] == "alice"
    assert conv["archived"] is False
    assert conv["agent_type"] is None
    assert (conv["message_count"], conv["task_count"], conv["total_cost_usd"]) == (0, 0, 0)
    assert conv["created_at"].endswith("Z")
    cid = conv["conversation_id"]

    r = await client.get(f"/api/conversations/{cid}", headers=auth("user"))
    assert r.json() == conv

    r = await client.patch(
        f"/api/conversations/{cid}",
        json={"title": "Refactor", "archived": True},
        headers=auth("user"),
    )
    assert r.status_code == 200, r.text
    assert (r.json()["title"], r.json()["archived"]) == ("Refactor", True)

    listed = (await client.get("/api/conversations", headers=auth("user"))).json()
    assert listed["total"] == 0  # archived ones are hidden by default
    listed = (await client.get("/api/conversations?archived=true", headers=auth("user"))).json()
    assert [c["conversation_id"] for c in listed["items"]] == [cid]

    r = await client.delete(f"/api/conversations/{cid}", headers=auth("user"))
    assert r.status_code == 204
    r = await client.get(f"/api/conversations/{cid}", headers=auth("user"))
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_title_search_and_agent_type_default(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    a = await new_conversation(client, auth, title="Fix 100% of the Bugs", agent_type="coder")
    await new_conversation(client, auth, title="Write docs")
    r = await client.get("/api/conversations", params={"q": "100%"}, headers=auth("user"))
    assert [c["conversation_id"] for c in r.json()["items"]] == [a["conversation_id"]]
    r = await client.get("/api/conversations", params={"q": "bUgS"}, headers=auth("user"))
    assert r.json()["total"] == 1
    r = await client.get("/api/conversations", params={"q": "_"}, headers=auth("user"))
    assert r.json()["total"] == 0

    # agent_type: body, else the conversation's, else the configured default.
    r = await post(client, auth, a["conversation_id"], content="go")
    task = (await client.get(f"/api/tasks/{r.json()['task_id']}", headers=auth("user"))).json()
    assert task["agent_type"] == "coder"
    assert task["source"] == "dashboard"
    assert task["user_id"] == "alice"
    assert task["conversation_id"] == a["conversation_id"]
    assert task["status"] == "queued"
    assert task["input_message"] == "go"
    r = await post(client, auth, a["conversation_id"], content="go", agent_type="reviewer")
    task = (await client.get(f"/api/tasks/{r.json()['task_id']}", headers=auth("user"))).json()
    assert task["agent_type"] == "reviewer"
    b = await new_conversation(client, auth)
    r = await post(client, auth, b["conversation_id"], content="go")
    task = (await client.get(f"/api/tasks/{r.json()['task_id']}", headers=auth("user"))).json()
    assert task["agent_type"] == "general"


async def test_updated_at_moves_with_messages(client: httpx.AsyncClient, auth: Headers) -> None:
    first = await new_conversation(client, auth, title="first")
    second = await new_conversation(client, auth, title="second")
    order = (await client.get("/api/conversations", headers=auth("user"))).json()["items"]
    assert [c["title"] for c in order] == ["second", "first"]
    r = await post(client, auth, first["conversation_id"], content="hi", create_task=False)
    assert r.status_code == 201
    assert r.json()["task_id"] is None
    order = (await client.get("/api/conversations", headers=auth("user"))).json()["items"]
    assert [c["title"] for c in order] == ["first", "second"]
    assert order[0]["message_count"] == 1
    assert order[0]["task_count"] == 0
    assert second["updated_at"] <= order[0]["updated_at"]


async def test_isolation_every_endpoint(client: httpx.AsyncClient, auth: Headers) -> None:
    mine = await new_conversation(client, auth, title="alice's")
    cid = mine["conversation_id"]
    r = await post(client, auth, cid, content="secret", create_task=False)
    assert r.status_code == 201
    await register(client, auth, "loose-task")

    bob = "other_user"
    calls = [
        ("GET", f"/api/conversations/{cid}", None),
        ("PATCH", f"/api/conversations/{cid}", {"title": "mine now"}),
        ("GET", f"/api/conversations/{cid}/messages", None),
        ("POST", f"/api/conversations/{cid}/messages", {"content": "hi"}),
        ("POST", f"/api/conversations/{cid}/tasks", {"task_id": "loose-task"}),
        ("DELETE", f"/api/conversations/{cid}", None),
    ]
    for method, url, body in calls:
        r = await client.request(method, url, json=body, headers=auth(bob))
        assert r.status_code == 404, (method, url, r.text)
        # The same answer as for a conversation that does not exist at all.
        r2 = await client.request(
            method, url.replace(cid, "no-such-conversation"), json=body, headers=auth(bob)
        )
        assert r2.status_code == 404
    listed = (await client.get("/api/conversations", headers=auth(bob))).json()
    assert listed["total"] == 0
    # A user's user_id filter narrows only within their own conversations.
    listed = (
        await client.get("/api/conversations", params={"user_id": "alice"}, headers=auth(bob))
    ).json()
    assert listed["total"] == 0

    # Nothing changed for alice.
    still = (await client.get(f"/api/conversations/{cid}", headers=auth("user"))).json()
    assert still["title"] == "alice's"
    assert still["message_count"] == 1
    assert still["task_count"] == 0
    task = (await client.get("/api/tasks/loose-task", headers=auth("user"))).json()
    assert task["conversation_id"] is None

    # Admins see every conversation and may filter by owner.
    await new_conversation(client, auth, role=bob, title="bob's")
    everyone = (await client.get("/api/conversations", headers=auth("admin"))).json()
    assert everyone["total"] == 2
    only_alice = (
        await client.get("/api/conversations", params={"user_id": "alice"}, headers=auth("admin"))
    ).json()
    assert [c["conversation_id"] for c in only_alice["items"]] == [cid]
    r = await client.get(f"/api/conversations/{cid}/messages", headers=auth("admin"))
    assert r.json()["total"] == 1


async def test_roles(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    for role in ("assistant", "system"):
        r = await post(client, auth, cid, content="I am the bot", role=role)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    # Agents post assistant (their default) and system messages to any conversation by id.
    r = await post(client, auth, cid, as_="agent", content="hello from the agent")
    assert r.status_code == 201, r.text
    assert r.json()["role"] == "assistant"
    assert r.json()["task_id"] is None


async def test_agent_roles_and_access(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    hdr = auth("agent")
    url = f"/api/conversations/{cid}/messages"
    r = await client.post(url, json={"content": "status", "role": "system"}, headers=hdr)
    assert r.status_code == 201
    assert r.json()["role"] == "system"
    r = await client.post(url, json={"content": "pretend", "role": "user"}, headers=hdr)
    assert r.status_code == 403
    assert (await client.get(url, headers=hdr)).json()["total"] == 1
    assert (await client.get(f"/api/conversations/{cid}", headers=hdr)).status_code == 200
    assert (await client.get("/api/conversations", headers=hdr)).status_code == 403
    assert (await client.post("/api/conversations", json={}, headers=hdr)).status_code == 403
    r = await client.patch(f"/api/conversations/{cid}", json={"title": "x"}, headers=hdr)
    assert r.status_code == 403
    assert (await client.delete(f"/api/conversations/{cid}", headers=hdr)).status_code == 403
    r = await client.post(url, json={"content": "x"}, headers={})
    assert r.status_code == 401
    # Admins may post any role; their `user` message creates a task owned by the owner.
    r = await client.post(url, json={"content": "as admin"}, headers=auth("admin"))
    assert r.status_code == 201
    task = (await client.get(f"/api/tasks/{r.json()['task_id']}", headers=auth("user"))).json()
    assert task["user_id"] == "alice"
    r = await client.post(url, json={"content": "a", "role": "assistant"}, headers=auth("admin"))
    assert r.status_code == 201
    assert r.json()["task_id"] is None  # only user messages create tasks


BAD_MESSAGES: list[dict[str, object]] = [
    {"content": ""},
    {"content": "x" * 100_001},
    {},
    {"content": "x", "role": "robot"},
    {"content": "x", "role": None},
    {"content": 5},
    {"content": "x", "unknown": 1},
    {"content": "x", "agent_type": "Not A Slug"},
    {"content": "x", "create_task": "maybe"},
]


async def test_message_validation(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    for body in BAD_MESSAGES:
        r = await client.post(f"/api/conversations/{cid}/messages", json=body, headers=auth("user"))
        assert r.status_code == 422, (body, r.text)
        assert r.json()["errors"]
    assert await messages(client, auth, cid) == []
    assert (await client.get("/api/tasks", headers=auth("user"))).json()["total"] == 0


async def test_message_limits_accept_edges(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth))["conversation_id"]
    for content in ("x", "é" * 100_000):
        r = await post(client, auth, cid, content=content, create_task=False)
        assert r.status_code == 201, r.text
        assert r.json()["content"] == content


BAD_CONVERSATIONS: list[dict[str, object]] = [
    {"title": ""},
    {"title": "x" * 501},
    {"title": None},
    {"agent_type": "BAD TYPE"},
    {"metadata": []},
    {"user_id": "bob"},
]


async def test_conversation_validation(client: httpx.AsyncClient, auth: Headers) -> None:
    cid = (await new_conversation(client, auth, title="t" * 500))["conversation_id"]
    for body in BAD_CONVERSATIONS:
        r = await client.post("/api/conversations", json=body, headers=auth("user"))
        assert r.status_code == 422, (body, r.text)
        r = await client.patch(f"/api/conversations/{cid}", json=body, headers=auth("user"))
        assert r.status_code == 422, (body, r.text)
    r = await client.patch(
        f"/api/conversations/{cid}", json={"archived": None}, headers=auth("user")
    )
    assert r.status_code == 422
    listed = (await client.get("/api/conversations", headers=auth("user"))).json()
    assert listed["total"] == 1
    assert listed["items"][0]["title"] == "t" * 500


async def test_unknowns(client: httpx.AsyncClient, auth: Headers) -> None:
    for method, url, body in [
        ("GET", "/api/conversations/nope", None),
        ("PATCH", "/api/conversations/nope", {"title": "x"}),
        ("DELETE", "/api/conversations/nope", None),
        ("GET", "/api/conversations/nope/messages", None),
        ("POST", "/api/conversations/nope/messages", {"content": "x"}),
        ("POST", "/api/conversations/nope/tasks", {"task_id": "t"}),
    ]:
        r = await client.request(method, url, json=body, headers=auth("admin"))
        assert r.status_code == 404, (method, url, r.text)
    cid = (await new_conversation(client, auth))["conversation_id"]
    r = await client.post(
        f"/api/conversations/{cid}/tasks", json={"task_id": "missing"}, headers=auth("user")
    )
    assert r.status_code == 404
    r = await client.post(
        f"/api/conversations/{cid}/tasks", json={"task_id": "bad id!"}, headers=auth("user")
    )
    assert r.status_code == 422
    bad_pages: tuple[dict[str, Any], ...] = (
        {"page": 1, "cursor": "x"},
        {"cursor": "garbage!"},
        {"per_page": 0},
    )
    for params in bad_pages:
        r = await client.get("/api/conversations", params=params, headers=auth("user"))
        assert r.status_code == 422, params
        r = await client.get(
            f"/api/conversations/{cid}/messages", params=params, headers=auth("user")
        )
        assert r.status_code == 422, params
    r = await client.get("/api/conversations", params={"archived": "perhaps"}, headers=auth("user"))
    assert r.status_code == 422


async def test_unstorable_text_is_422(client: httpx.AsyncClient, auth: Headers) -> None:
    """PostgreSQL cannot store NUL or lone surrogates: refused on both backends, never 5xx."""
    cid = (await new_conversation(client, auth))["conversation_id"]
    hdr = {**auth("user"), "Content-Type": "application/json"}
    for body in (
        {"content": "a\x00b"},
        {"content": "a\ud800b"},
        {"content": "ok", "metadata": {"k": ["\x00"]}},
        {"content": "ok", "metadata": {"\x00": 1}},
    ):
        r = await client.post(
            f"/api/conversations/{cid}/messages", content=json.dumps(body), headers=hdr
        )
        assert r.status_code == 422, (body, r.text)
    unstorable: tuple[dict[str, Any], ...] = ({"title": "a\x00"}, {"metadata": {"x": "\ud800"}})
    for body in unstorable:
        r = await client.post("/api/conversations", content=json.dumps(body), headers=hdr)
        assert r.status_code == 422, (body, r.text)
        r = await client.patch(f"/api/conversations/{cid}", content=json.dumps(body), headers=hdr)
        assert r.status_code == 422, (body, r.text)
    for params in ({"q": "a\x00"}, {"user_id": "\x00"}):
        r = await client.get("/api/conversations", params=params, headers=hdr)
        assert r.status_code == 422, params
    for path in ("/api/conversations/a%00b", "/api/conversations/a%20b/messages"):
        r = await client.get(path, headers=hdr)
        assert r.status_code in (404, 422), path
    assert await messages(client, auth, cid) == []
