"""WebSocket fuzzing: hypothesis-generated frames against a real uvicorn server.

Random JSON, wrong types, huge and deeply nested values, binary frames and rapid
subscribe/unsubscribe churn: the server answers with protocol messages (errors with a
documented code) or closes cleanly, never crashes, and stays healthy afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import websockets
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from dashboard_api.settings import Settings
from tests.support.env import Backend
from tests.support.servers import threaded_server
from tests.support.tokens import create_tokens

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
MAX_MESSAGE_BYTES = Settings.model_fields["ws_max_message_bytes"].default
ERROR_CODES = {
    "invalid_json",
    "unknown_type",
    "invalid_channel",
    "forbidden",
    "not_found",
    "too_many_subscriptions",
    "message_too_large",
}
REPLY_TYPES = {"subscribed", "unsubscribed", "pong", "error", "task_output", "task_status"}
# Clean closes: normal, message over the transport limit, try again later (slow consumer).
CLEAN_CLOSES = {1000, 1009, 1013}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
channels = st.sampled_from(
    ["tasks", "agents", "webhooks", "sources", "task:wsf-1", "task:nope", "conversation:x"]
) | st.one_of(st.text(max_size=300), st.integers(), st.none(), st.lists(st.text(max_size=5)))
since = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.booleans(),
)
protocol_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "ping"]) | st.text(max_size=20)},
    optional={"channel": channels, "since_seq": since, "extra": json_values},
)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


frames = st.one_of(
    protocol_messages.map(lambda m: json.dumps(m)),
    json_values.map(lambda v: json.dumps(v)),
    st.text(max_size=200),  # mostly not JSON
    st.binary(max_size=200),  # binary frames
    st.integers(min_value=1, max_value=200_000).map(
        lambda n: '{"type":"ping","pad":"' + "x" * n + '"}'
    ),
    st.sampled_from([10, 1_000, 100_000]).map(lambda d: _nested(d).decode()),
    st.integers(min_value=1, max_value=30).map(
        lambda n: [
            orjson.dumps({"type": t, "channel": "task:wsf-1", "since_seq": 0}).decode()
            for _ in range(n)
            for t in ("subscribe", "unsubscribe")
        ]
    ),
)


def _flatten(items: list[Any]) -> list[str | bytes]:
    out: list[str | bytes] = []
    for item in items:
        out.extend(item if isinstance(item, list) else [item])
    return out


def _is_ping(frame: str | bytes) -> bool:
    """Whether the server answers this frame with a pong (docs/api.md §10: a JSON object of
    type `ping` within the message size limit, sent as text or binary)."""
    raw = frame.encode() if isinstance(frame, str) else frame
    if len(raw) > MAX_MESSAGE_BYTES:
        return False
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and message.get("type") == "ping"


async def _session(url: str, token: str, sent: list[str | bytes]) -> None:
    """Send the frames, then a ping: every answer must be a protocol message, up to the
    pong of that last ping (each ping among the frames is answered by a pong of its own;
    stopping at the first would leave the answers to the later frames unchecked)."""
    pongs_due = sum(_is_ping(frame) for frame in sent) + 1
    async with websockets.connect(f"{url}/ws?token={token}", max_size=None) as ws:
        try:
            for frame in sent:
                await ws.send(frame)
            await ws.send('{"type":"ping"}')
            async with asyncio.timeout(20):
                while True:
                    message = orjson.loads(await ws.recv())
                    assert isinstance(message, dict), message
                    assert message.get("type") in REPLY_TYPES, message
                    if message["type"] == "error":
                        assert message["code"] in ERROR_CODES, message
                        assert isinstance(message["message"], str)
                    if message["type"] == "pong":
                        pongs_due -= 1
                        if pongs_due == 0:
                            return
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
        else:
            return
    assert code in CLEAN_CLOSES, f"closed with {code}"


@pytest.fixture
def ws_server(sync_backend: Backend) -> Iterator[tuple[str, dict[str, str]]]:
    tokens = create_tokens(sync_backend.database_url)
    with threaded_server(sync_backend.settings(log_level="WARNING")) as url:
        agent = {"Authorization": f"Bearer {tokens['agent']}"}
        r = httpx.post(
            f"{url}/api/tasks",
            json={"task_id": "wsf-1", "agent_type": "c", "input_message": "x", "status": "running"},
            headers=agent,
        )
        assert r.status_code == 201, r.text
        for i in range(5):
            httpx.post(f"{url}/api/tasks/wsf-1/output", json={"content": f"c{i}"}, headers=agent)
        yield url, tokens


def test_random_frames_get_errors_or_clean_close(ws_server: tuple[str, dict[str, str]]) -> None:
    url, tokens = ws_server
    ws_url = url.replace("http://", "ws://")
    tried = 0

    @hsettings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        role=st.sampled_from(["user", "agent", "admin"]),
        sent=st.lists(frames, min_size=1, max_size=12).map(_flatten),
    )
    def run(role: str, sent: list[str | bytes]) -> None:
        nonlocal tried
        tried += 1
        asyncio.run(_session(ws_url, tokens[role], sent))

    run()
    assert tried >= min(EXAMPLES, 10)
    # The server is still healthy: HTTP answers, and a new connection works.
    assert httpx.get(f"{url}/api/health").json() == {"status": "ok"}
    asyncio.run(_session(ws_url, tokens["user"], []))
    print(f"\nws fuzz: {tried} sessions")


async def _gather(*steps: Awaitable[None]) -> None:
    await asyncio.gather(*steps)


def test_subscribe_churn_across_connections_leaves_no_subscription(
    ws_server: tuple[str, dict[str, str]],
) -> None:
    """Many sockets subscribing, unsubscribing and vanishing mid-replay leave the hub clean."""
    url, tokens = ws_server
    ws_url = url.replace("http://", "ws://")

    async def churn(n: int) -> None:
        async with websockets.connect(f"{ws_url}/ws?token={tokens['user']}") as ws:
            for _ in range(n):
                await ws.send('{"type":"subscribe","channel":"task:wsf-1","since_seq":0}')
                await ws.send('{"type":"subscribe","channel":"tasks"}')
                await ws.send('{"type":"unsubscribe","channel":"task:wsf-1"}')
            # leave without unsubscribing from `tasks`, without reading the replays

    asyncio.run(_gather(*(churn(10) for _ in range(10))))
    # The server tears a closed socket down in its own time (a loaded machine may take a
    # while): wait for the hub to be clean rather than for a fixed delay.
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    realtime: dict[str, int] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/api/status", headers=admin)
        assert status.status_code == 200, status.text
        realtime = status.json()["realtime"]
        if realtime["connections"] == 0 and realtime["subscriptions"] == 0:
            break
        time.sleep(0.1)
    assert realtime["connections"] == 0, realtime
    assert realtime["subscriptions"] == 0, realtime
    assert httpx.get(f"{url}/api/health").status_code == 200
