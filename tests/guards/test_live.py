"""The whole path on a real server with its periodic jobs running: a cost write moves a
budget's state, `budget_state` reaches a WebSocket subscriber of `budgets`, the budget
rule fires (`alert` on `alerts`), and the sender job delivers the notification."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import websockets

from tests.guards.receiver import running_receiver
from tests.support.env import Backend
from tests.support.servers import serve_app
from tests.support.tokens import make_token


async def _next_event(ws: Any, type_: str, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            if event.get("type") == type_:
                return dict(event)


async def test_budget_state_alert_and_delivery_live(backend: Backend) -> None:
    settings = backend.settings(
        budgets_evaluate_interval_seconds=0.5,
        alerts_evaluate_interval_seconds=1,
        alerts_sender_interval_seconds=0.2,
        alerts_allow_private_urls=True,
    )
    async with running_receiver() as receiver, serve_app(settings) as (app, port):
        admin = {"Authorization": f"Bearer {await make_token(app, role='admin', user_id='root')}"}
        user = await make_token(app, role="user", user_id="alice")
        agent_token = await make_token(app, role="agent", user_id="a")
        agent = {"Authorization": f"Bearer {agent_token}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            r = await http.put(
                "/api/alerts/channels/hook",
                json={"type": "webhook", "url": receiver.url},
                headers=admin,
            )
            assert r.status_code == 200, r.text
            r = await http.put(
                "/api/alerts/rules/budgets",
                json={"name": "budgets", "kind": "budget", "threshold": 1, "channels": ["hook"]},
                headers=admin,
            )
            assert r.status_code == 200
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={agent_token}") as ws:
                await ws.send(json.dumps({"type": "subscribe", "channel": "budgets"}))
                assert (await _next_event(ws, "error"))["code"] == "forbidden"
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={user}") as ws:
                for channel in ("budgets", "alerts"):
                    await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
                    assert (await _next_event(ws, "subscribed"))["channel"] == channel
                r = await http.put(
                    "/api/budgets/team",
                    json={"name": "team", "period": "month", "limit_usd": 2},
                    headers=admin,
                )
                assert r.status_code == 200
                first = await _next_event(ws, "budget_state")
                assert first["budget"]["state"] == "ok"
                body = {"task_id": "t1", "agent_type": "coder", "input_message": "x"}
                assert (await http.post("/api/tasks", json=body, headers=agent)).status_code == 201
                written = time.monotonic()
                r = await http.patch("/api/tasks/t1", json={"cost_usd": 1.9}, headers=agent)
                assert r.status_code == 200
                warning = await _next_event(ws, "budget_state")
                took = time.monotonic() - written
                assert warning["channel"] == "budgets"
                assert warning["budget"]["state"] == "warning"
                assert warning["budget"]["spent_usd"] == 1.9
                alert = await _next_event(ws, "alert")
                assert alert["channel"] == "alerts"
                assert alert["alert"]["rule_id"] == "budgets"
                assert alert["alert"]["state"] == "firing"
                await receiver.wait_for(1)
                assert json.loads(receiver.requests[0].body) == alert["alert"]
    print(f"budget_state {took * 1000:.0f} ms after the write")
