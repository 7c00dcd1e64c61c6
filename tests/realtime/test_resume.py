"""Resume without gaps (WS and SSE), slow consumers, and the `tail` command, on both backends."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import sys
from typing import Any

import orjson
import pytest
import websockets
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from dashboard_api.client import DashboardClient
from tests.support.servers import LiveServer
from tests.support.ws import recv_json, send_json

_ids = itertools.count()


async def _consume(
    live: LiveServer, task_id: str, since: int, cuts: list[int]
) -> list[tuple[int, str]]:
    """Follow the task, dropping the connection after `cuts[i]` chunks each time."""
    got: list[tuple[int, str]] = []
    last = since
    cuts = list(cuts)
    while True:
        cut = cuts.pop(0) if cuts else None
        async with await live.connect("user") as ws:
            await send_json(
                ws, {"type": "subscribe", "channel": f"task:{task_id}", "since_seq": last}
            )
            first = await recv_json(ws)
            assert first["type"] == "subscribed", first
            received = 0
            while True:
                msg = await recv_json(ws, 20)
                if msg["type"] == "task_output":
                    got.append((msg["seq"], msg["content"]))
                    last = msg["seq"]
                    received += 1
                    if cut is not None and received >= cut:
                        break
                elif msg["type"] == "task_status" and msg["status"] == "completed":
                    return got


@given(
    n=st.integers(1, 40),
    since_frac=st.floats(0, 1),
    batches=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    cuts=st.lists(st.integers(1, 15), max_size=3),
    delay=st.sampled_from([0, 0, 0.001, 0.005]),
)
@hyp_settings(max_examples=int(os.environ.get("REALTIME_MAX_EXAMPLES", "12")))
async def test_resume_is_exact_under_concurrent_appends(
    live: LiveServer,
    n: int,
    since_frac: float,
    batches: list[int],
    cuts: list[int],
    delay: float,
) -> None:
    task_id = f"prop-{next(_ids)}-{os.getpid()}"
    await live.create_task(task_id)
    since = int(since_frac * n)
    # Some chunks exist before the client subscribes with since_seq <= what exists.
    pre = min(since, n)
    if pre:
        await live.append(task_id, *[f"c{i}" for i in range(1, pre + 1)])

    async def produce_rest() -> None:
        await asyncio.sleep(delay)
        seq = pre
        sizes = itertools.cycle(batches)
        while seq < n:
            size = min(next(sizes), n - seq)
            await live.append(task_id, *[f"c{i}" for i in range(seq + 1, seq + size + 1)])
            seq += size
        await live.finish(task_id)

    producer = asyncio.create_task(produce_rest())
    got = await asyncio.wait_for(_consume(live, task_id, since, cuts), 60)
    await producer
    assert got == [(i, f"c{i}") for i in range(since + 1, n + 1)]


async def test_sse_stream_with_last_event_id(live: LiveServer) -> None:
    await live.create_task("t-sse")
    await live.append("t-sse", "a", "b", "c")
    headers = {**live.headers("user"), "Last-Event-ID": "1"}

    async def read() -> list[tuple[str, str | None, Any]]:
        events: list[tuple[str, str | None, Any]] = []
        async with live.http.stream("GET", "/api/tasks/t-sse/stream", headers=headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            name, ident, data = "", None, None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("data: "):
                    data = orjson.loads(line[6:])
                elif line == "" and name:
                    events.append((name, ident, data))
                    name, ident, data = "", None, None
        return events

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.2)
    await live.append("t-sse", "d")
    await live.finish("t-sse")
    events = await asyncio.wait_for(reader, 20)
    outputs = [e for e in events if e[0] == "output"]
    assert [(i, d) for _, i, d in outputs] == [
        (str(s), {"seq": s, "stream": "stdout", "content": c})
        for s, c in [(2, "b"), (3, "c"), (4, "d")]
    ]
    assert events[-1][0] == "status"
    assert events[-1][2]["status"] == "completed"
    r = await live.http.get("/api/tasks/none/stream", headers=live.headers("user"))
    assert r.status_code == 404
    r = await live.http.get("/api/tasks/t-sse/stream", headers=live.headers("agent"))
    assert r.status_code == 403
    r = await live.http.get("/api/tasks/t-sse/stream")
    assert r.status_code == 401


# Both write paths (see test_write_path.py); uvicorn deprecates the legacy protocol.
@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
@pytest.mark.parametrize("impl", ["websockets-sansio", "websockets"])
async def test_slow_consumer_is_closed_1013_fast_one_keeps_receiving(serve: Any, impl: str) -> None:
    live = await serve(ws_send_queue_size=20, uvicorn_options={"ws": impl})
    await live.create_task("t-slow")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
    slow = await websockets.connect(
        live.ws_url(live.tokens.user), sock=sock, max_queue=1, max_size=None
    )
    fast = await live.connect("user")
    for ws in (slow, fast):
        await send_json(ws, {"type": "subscribe", "channel": "task:t-slow"})
        assert (await recv_json(ws))["type"] == "subscribed"

    n, size = 300, 32 * 1024
    received: list[int] = []

    async def read_fast() -> None:
        while True:
            msg = await recv_json(fast, 30)
            if msg["type"] == "task_output":
                received.append(msg["seq"])
            elif msg["type"] == "task_status" and msg["status"] == "completed":
                return

    reader = asyncio.create_task(read_fast())
    blob = "x" * size
    for i in range(0, n, 10):
        await live.append("t-slow", *[blob] * 10)
        if i == 200:
            # By now the slow socket's queue has overflowed: it was closed server-side.
            pass
    await live.finish("t-slow")
    await asyncio.wait_for(reader, 60)
    assert received == list(range(1, n + 1))
    # The slow peer now reads what was buffered, then the 1013 close.
    code = None
    try:
        async with asyncio.timeout(30):
            while True:
                await slow.recv()
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
    assert code == 1013
    await fast.close()


async def test_client_follow_reconnects_and_resumes(live: LiveServer) -> None:
    await live.create_task("t-follow")
    await live.append("t-follow", "a", "b")
    seen: list[int] = []
    async with DashboardClient(live.url, live.tokens.user) as client:
        stream = client.follow("t-follow", initial_backoff=0.05)
        async for event in stream:
            if event.kind == "output":
                assert event.seq is not None
                seen.append(event.seq)
                if event.seq == 2:
                    # Drop every socket of the server: the client must reconnect and resume.
                    for conn in list(live.ctx.hub.connections):
                        conn.on_overflow()
                    await live.append("t-follow", "c", "d")
                    await live.finish("t-follow")
            elif event.terminal:
                break
        await stream.aclose()
    assert seen == [1, 2, 3, 4]


async def test_tail_prints_the_complete_output_and_exits_0(live: LiveServer) -> None:
    await live.create_task("t-tail")
    await live.append("t-tail", "line 1\n")
    exe = os.path.join(os.path.dirname(sys.executable), "dashboard-api")
    proc = await asyncio.create_subprocess_exec(
        exe,
        "tail",
        "t-tail",
        "--url",
        live.url,
        "--token",
        live.tokens.user,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert first == b"line 1\n"
    for i in range(2, 51):
        await live.append("t-tail", f"line {i}\n")
    await live.finish("t-tail")
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert (first + out).decode() == "".join(f"line {i}\n" for i in range(1, 51))
    # Unknown task: exit 1; bad token: exit 2.
    for args, code in ((["missing"], 1), (["t-tail", "--token", "bad"], 2)):
        argv = ["tail", *args, "--url", live.url]
        if "--token" not in args:
            argv += ["--token", live.tokens.user]
        p = await asyncio.create_subprocess_exec(
            exe, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        await asyncio.wait_for(p.communicate(), 30)
        assert p.returncode == code


async def test_status_reports_realtime(live: LiveServer) -> None:
    async with await live.connect("user") as ws:
        await send_json(ws, {"type": "subscribe", "channel": "tasks"})
        await recv_json(ws)
        r = await live.http.get("/api/status", headers=live.headers("user"))
        if r.status_code == 404:
            return  # /api/status not there yet (core)
        body = r.json()
        assert body["components"]["broker"]["ok"] is True
        assert body["realtime"]["connections"] >= 1
        assert body["realtime"]["subscriptions"] >= 1
