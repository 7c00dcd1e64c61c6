"""Page and cursor walks return every conversation and message exactly once, in order."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from tests.support.clock import FakeClock
from tests.support.tokens import make_token


async def walk(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    params: dict[str, Any],
    per_page: int,
    *,
    cursor_mode: bool,
) -> tuple[list[str], int, str]:
    """Every id in the order served, the reported total, and the id field name."""
    key = "message_id" if url.endswith("/messages") else "conversation_id"
    seen: list[str] = []
    totals: set[int] = set()
    page, cursor = 1, None
    for _ in range(500):
        query = {**params, "per_page": per_page}
        if cursor_mode and cursor is not None:
            query["cursor"] = cursor
        elif not cursor_mode:
            query["page"] = page
        r = await client.get(url, params=query, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        totals.add(body["total"])
        assert body["pages"] == -(-body["total"] // per_page)
        seen.extend(item[key] for item in body["items"])
        if cursor_mode:
            assert body["page"] is None or cursor is None
            cursor = body["next_cursor"]
            if cursor is None:
                break
        else:
            assert body["page"] == page
            if page >= body["pages"]:
                assert body["next_cursor"] is None
                break
            assert body["next_cursor"] is not None
            page += 1
    assert len(totals) == 1
    return seen, totals.pop(), key


@given(
    plan=st.lists(
        st.tuples(
            st.sampled_from(["create", "post", "archive"]),
            st.integers(0, 2),  # ms to advance first: 0 makes ties
            st.integers(0, 100),  # which conversation a post/archive targets
        ),
        max_size=14,
    ),
    per_page=st.integers(1, 6),
    needle=st.sampled_from([None, "a", "B", "zz"]),
)
async def test_conversation_walks(
    clocked_app: FastAPI,
    clocked_client: httpx.AsyncClient,
    clock: FakeClock,
    plan: list[tuple[str, int, int]],
    per_page: int,
    needle: str | None,
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"  # a fresh owner per example isolates its rows
    headers = {
        "Authorization": f"Bearer {await make_token(clocked_app, role='user', user_id=user)}"
    }
    model: dict[str, dict[str, Any]] = {}
    for action, ms, pick in plan:
        clock.advance(ms=ms)
        if action == "create" or not model:
            title = ["alpha", "Beta", "gamma", "zz top"][len(model) % 4]
            r = await clocked_client.post(
                "/api/conversations", json={"title": title}, headers=headers
            )
            assert r.status_code == 201
            c = r.json()
            model[c["conversation_id"]] = {"t": clock.now(), "title": title, "archived": False}
            continue
        cid = sorted(model)[pick % len(model)]
        if action == "post":
            r = await clocked_client.post(
                f"/api/conversations/{cid}/messages",
                json={"content": "m", "create_task": False},
                headers=headers,
            )
            assert r.status_code == 201
            model[cid]["t"] = clock.now()
        else:
            r = await clocked_client.patch(
                f"/api/conversations/{cid}", json={"archived": True}, headers=headers
            )
            assert r.status_code == 200
            model[cid]["archived"] = True

    for archived in (False, True):
        params: dict[str, Any] = {"archived": str(archived).lower()}
        if needle is not None:
            params["q"] = needle
        expected = sorted(
            (
                cid
                for cid, m in model.items()
                if m["archived"] == archived
                and (needle is None or needle.casefold() in m["title"].casefold())
            ),
            key=lambda cid: (model[cid]["t"], cid),
            reverse=True,
        )
        for cursor_mode in (False, True):
            seen, total, _ = await walk(
                clocked_client,
                "/api/conversations",
                headers,
                params,
                per_page,
                cursor_mode=cursor_mode,
            )
            assert seen == expected
            assert total == len(expected)


@given(
    gaps=st.lists(st.integers(0, 1), max_size=15),
    per_page=st.integers(1, 7),
)
async def test_message_walks(
    clocked_app: FastAPI,
    clocked_client: httpx.AsyncClient,
    clock: FakeClock,
    gaps: list[int],
    per_page: int,
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    headers = {
        "Authorization": f"Bearer {await make_token(clocked_app, role='user', user_id=user)}"
    }
    r = await clocked_client.post("/api/conversations", json={}, headers=headers)
    cid = r.json()["conversation_id"]
    posted: list[tuple[Any, str]] = []
    for i, gap in enumerate(gaps):
        clock.advance(ms=gap)
        r = await clocked_client.post(
            f"/api/conversations/{cid}/messages",
            json={"content": f"m{i}", "create_task": i % 5 == 0},
            headers=headers,
        )
        assert r.status_code == 201
        posted.append((clock.now(), r.json()["message_id"]))
    expected = [mid for _, mid in sorted(posted)]
    url = f"/api/conversations/{cid}/messages"
    for cursor_mode in (False, True):
        seen, total, _ = await walk(
            clocked_client, url, headers, {}, per_page, cursor_mode=cursor_mode
        )
        assert seen == expected
        assert total == len(gaps)
