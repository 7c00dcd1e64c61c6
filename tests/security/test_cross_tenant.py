"""No operation answers one user's data to another: enumerated from `/openapi.json`.

Alice owns a conversation (a secret title, secret metadata, a secret message, a linked
task). Then, for **every operation the app documents** (features landing later
included), bob — another `user` — calls it aimed at alice's resources:

- every operation with a `conversation_id` in its path, whatever the method, is 404 —
  the very answer a conversation that does not exist gets — and changes nothing;
- every GET, plain and with each of its filters pointed at alice (`user_id=alice`,
  `conversation_id=<hers>`, `q=<her secret>`), never carries one of her secrets, and
  never names her conversation outside a task (tasks are readable by every user, docs/api.md
  §1, and a task says which conversation it belongs to; a task's live SSE stream, which
  never ends, is left out).

The same calls as alice and as an admin do see the secrets, so the probes are aimed
at real data. The WebSocket side (`conversation:{id}` is `not_found` for bob) is
`conversations/test_ws.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI

Auth = Callable[[str], dict[str, str]]

SECRET = "s3cret-" + uuid.uuid4().hex[:10]
TITLE = f"title {SECRET}"
MESSAGE = f"message {SECRET}"
META = f"meta {SECRET}"
# Operations whose answers are tasks: a task names its conversation, and every user reads
# every task (docs/api.md §1), so alice's conversation id may appear there, never her secrets.
TASK_PATHS = ("/api/tasks",)
# A valid body for every non-GET operation on a conversation. A new one fails the test
# until it is listed here, so that it cannot escape the check.
BODIES: dict[tuple[str, str], dict[str, Any] | None] = {
    ("PATCH", "/api/conversations/{conversation_id}"): {"title": "bob's now", "archived": True},
    ("DELETE", "/api/conversations/{conversation_id}"): None,
    ("POST", "/api/conversations/{conversation_id}/messages"): {"content": "from bob"},
    ("POST", "/api/conversations/{conversation_id}/tasks"): {"task_id": "loose-task"},
}
NO_SUCH = "no-such-conversation-0"


def _operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    spec = app.openapi()
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _params(op: dict[str, Any], where: str) -> list[dict[str, Any]]:
    return [p for p in op.get("parameters", []) if p["in"] == where]


async def _alice_world(client: httpx.AsyncClient, auth: Auth) -> dict[str, str]:
    r = await client.post(
        "/api/conversations",
        json={"title": TITLE, "agent_type": "coder", "metadata": {"note": META}},
        headers=auth("user"),
    )
    assert r.status_code == 201, r.text
    cid = r.json()["conversation_id"]
    r = await client.post(
        f"/api/conversations/{cid}/messages",
        json={"content": MESSAGE, "create_task": False},
        headers=auth("user"),
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        f"/api/conversations/{cid}/messages", json={"content": "do it"}, headers=auth("user")
    )
    assert r.status_code == 201, r.text
    linked = r.json()["task_id"]
    r = await client.post(
        "/api/tasks",
        json={"task_id": "loose-task", "agent_type": "coder", "input_message": "x"},
        headers=auth("agent"),
    )
    assert r.status_code == 201, r.text
    return {"conversation_id": cid, "task_id": linked, "name": "coder"}


def _url(path: str, ids: dict[str, str], op: dict[str, Any]) -> str:
    for p in _params(op, "path"):
        path = path.replace("{" + p["name"] + "}", ids.get(p["name"], "x-unknown"))
    return path


def _aimed_queries(op: dict[str, Any], ids: dict[str, str]) -> list[dict[str, str]]:
    """No filter, then each filter that could select alice's data, pointed at her."""
    names = {p["name"] for p in _params(op, "query")}
    aimed = {"user_id": "alice", "conversation_id": ids["conversation_id"], "q": SECRET}
    return [{}] + [{name: value} for name, value in aimed.items() if name in names]


async def _snapshot(client: httpx.AsyncClient, auth: Auth, cid: str) -> Any:
    conv = await client.get(f"/api/conversations/{cid}", headers=auth("user"))
    msgs = await client.get(f"/api/conversations/{cid}/messages", headers=auth("user"))
    loose = await client.get("/api/tasks/loose-task", headers=auth("user"))
    return conv.json(), msgs.json(), loose.json()["conversation_id"]


async def test_every_operation_hides_another_users_conversation(
    app: FastAPI, client: httpx.AsyncClient, auth: Auth
) -> None:
    ids = await _alice_world(client, auth)
    cid = ids["conversation_id"]
    before = await _snapshot(client, auth, cid)
    operations = _operations(app)
    bob = auth("other_user")
    probed = {"conversation_ops": 0, "gets": 0, "requests": 0}

    for method, path, op in operations:
        if "{conversation_id}" not in path:
            continue
        assert (method, path) in BODIES or method == "GET", f"list a body for {method} {path}"
        body = BODIES.get((method, path))
        r = await client.request(method, _url(path, ids, op), json=body, headers=bob)
        fake = await client.request(
            method, _url(path, {**ids, "conversation_id": NO_SUCH}, op), json=body, headers=bob
        )
        probed["conversation_ops"] += 1
        probed["requests"] += 2
        where = f"{method} {path} as bob"
        assert r.status_code == 404, f"{where}: {r.status_code} {r.text}"
        # Indistinguishable from a conversation that does not exist: existence does not leak.
        assert r.json() == _replace_text(fake.json(), NO_SUCH, cid), where
        assert SECRET not in r.text, where
    assert probed["conversation_ops"] >= 6  # get, patch, delete, messages (2), tasks

    for method, path, op in operations:
        if method != "GET" or path.endswith("/stream"):  # a live task stream never ends
            continue
        for query in _aimed_queries(op, ids):
            r = await client.get(_url(path, ids, op), params=query, headers=bob)
            probed["gets"] += 1
            probed["requests"] += 1
            where = f"GET {path} {query} as bob: {r.status_code}"
            assert r.status_code < 500, where
            assert SECRET not in r.text, f"alice's secret leaked: {where}\n{r.text[:2000]}"
            # A 404 on a conversation path echoes the id bob gave (checked above); tasks
            # may name their conversation.
            if not path.startswith(TASK_PATHS) and "{conversation_id}" not in path:
                assert cid not in r.text, f"alice's conversation named: {where}"
    assert probed["gets"] >= 25

    # Nothing bob did changed alice's conversation or linked her task.
    assert await _snapshot(client, auth, cid) == before

    # The probes were aimed at real data: alice and an admin see every secret.
    for role in ("user", "admin"):
        listed = await client.get("/api/conversations", params={"q": SECRET}, headers=auth(role))
        assert [c["conversation_id"] for c in listed.json()["items"]] == [cid], role
        one = await client.get(f"/api/conversations/{cid}", headers=auth(role))
        assert TITLE in one.text, role
        assert META in one.text, role
        msgs = await client.get(f"/api/conversations/{cid}/messages", headers=auth(role))
        assert MESSAGE in msgs.text, role


def _replace_text(value: Any, old: str, new: str) -> Any:
    """`value` with every occurrence of `old` in its strings replaced by `new`."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace_text(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _replace_text(v, old, new) for k, v in value.items()}
    return value
