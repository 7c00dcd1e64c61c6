"""WebSocket figures on `/metrics` from a real server: connections, subscriptions, and a
slow consumer closed with 1013."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import orjson
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from tests.support.env import Backend
from tests.support.servers import serve_app
from tests.support.tokens import make_token


def _metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def _recv(ws: Any) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    return value


async def test_ws_gauges_and_slow_consumer(backend: Backend) -> None:
    settings = backend.settings(ws_send_queue_size=20, metrics_cache_seconds=0)
    async with serve_app(settings) as (app, port):
        user = await make_token(app, role="user", user_id="u")
        agent = {"Authorization": f"Bearer {await make_token(app, role='agent', user_id='a')}"}
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            r = await http.post(
                "/api/tasks", json={"task_id": "s-1", "agent_type": "c", "input_message": "x"},
                headers=agent,
            )  # fmt: skip
            assert r.status_code == 201
            # A peer that does not read, behind a tiny receive buffer.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            slow = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws?token={user}", sock=sock, max_queue=1, max_size=None
            )
            fast = await websockets.connect(f"ws://127.0.0.1:{port}/ws?token={user}")
            # The fast peer hears only status events (it is not read until the end).
            for ws, channel in ((slow, "task:s-1"), (fast, "tasks")):
                await ws.send(orjson.dumps({"type": "subscribe", "channel": channel}).decode())
                assert (await _recv(ws))["type"] == "subscribed"
            text = (await http.get("/metrics")).text
            assert _metric(text, "dashboard_ws_connections") == 2
            assert _metric(text, "dashboard_ws_subscriptions") == 2
            assert _metric(text, "dashboard_ws_slow_consumer_disconnects_total") == 0

            blob = "x" * 32 * 1024
            for _ in range(30):
                r = await http.post(
                    "/api/tasks/s-1/output",
                    json={"chunks": [{"content": blob}] * 10},
                    headers=agent,
                )
                assert r.status_code == 200
            code = None
            try:
                async with asyncio.timeout(30):
                    while True:
                        await slow.recv()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
            assert code == 1013

            async def slow_counted() -> bool:
                text = (await http.get("/metrics")).text
                return _metric(text, "dashboard_ws_slow_consumer_disconnects_total") == 1

            async with asyncio.timeout(15):
                while not await slow_counted():
                    await asyncio.sleep(0.1)
            text = (await http.get("/metrics")).text
            assert _metric(text, "dashboard_ws_connections") == 1
            assert _metric(text, "dashboard_ws_sessions_total", outcome="closed_1013") == 1
            # The fast peer was handed its status events; the overflowing slow one lost some.
            assert _metric(text, "dashboard_events_delivered_total") > 0
            assert _metric(text, "dashboard_events_dropped_total") > 0
            # Of the deliveries, those of a channel group's shared write (a part of them).
            shared = _metric(text, "dashboard_events_delivered_shared_total")
            assert 0 <= shared <= _metric(text, "dashboard_events_delivered_total")
            await fast.close()
