"""Deliveries survive a SIGKILL of the server in the middle of sending: after a restart
every delivery is made, and every request the receiver got has its attempt record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.guards.receiver import running_receiver
from tests.support.servers import free_port

pytestmark = pytest.mark.slow


def _env(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    env.update(
        DASHBOARD_DATABASE_URL=f"sqlite+aiosqlite:///{db}",
        DASHBOARD_ALERTS_ALLOW_PRIVATE_URLS="true",
        DASHBOARD_ALERTS_EVALUATE_INTERVAL_SECONDS="0.5",
        DASHBOARD_ALERTS_SENDER_INTERVAL_SECONDS="0.2",
        DASHBOARD_ALERTS_DELIVERY_TIMEOUT_SECONDS="2",
        DASHBOARD_ALERTS_RETRY_FIRST_SECONDS="0.5",
        DASHBOARD_ALERTS_RETRY_MAX_SECONDS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


async def _token(env: dict[str, str], role: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dashboard_api", "token", "create", "--user", role, "--role", role,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err
    return out.decode().strip().splitlines()[-1]


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "dashboard_api", "serve", "--port", str(port)],
            env=env, stdout=sink, stderr=sink, start_new_session=True,
        )  # fmt: skip


async def _up(client: httpx.AsyncClient, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with asyncio.timeout(60):
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/api/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)


def _kill(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(20)


async def _all_attempts(client: httpx.AsyncClient, admin: dict[str, str]) -> list[dict[str, Any]]:
    r = await client.get("/api/alerts", params={"per_page": 200}, headers=admin)
    out: list[dict[str, Any]] = []
    for alert in r.json()["items"]:
        d = await client.get(f"/api/alerts/{alert['alert_id']}/deliveries", headers=admin)
        out.extend({**t, "alert_id": alert["alert_id"]} for t in d.json()["items"])
    return out


async def test_sigkill_mid_send_then_restart(tmp_path: Path) -> None:
    env = _env(tmp_path / "dashboard.db")
    admin = {"Authorization": f"Bearer {await _token(env, 'admin')}"}
    agent = {"Authorization": f"Bearer {await _token(env, 'agent')}"}
    port, log = free_port(), tmp_path / "serve.log"
    async with (
        running_receiver(default="hang") as receiver,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):
        proc = _serve(env, port, log)
        try:
            await _up(client, proc, log)
            for c in ("c1", "c2"):
                r = await client.put(
                    f"/api/alerts/channels/{c}",
                    json={"type": "webhook", "url": f"{receiver.url}/{c}", "secret": "k"},
                    headers=admin,
                )
                assert r.status_code == 200, r.text
            for i in (1, 2, 3):
                r = await client.put(
                    f"/api/alerts/rules/r{i}",
                    json={
                        "name": f"r{i}",
                        "kind": "cost_usd",
                        "threshold": i,
                        "channels": ["c1", "c2"],
                    },
                    headers=admin,
                )
                assert r.status_code == 200, r.text
            body = {"task_id": "t1", "agent_type": "coder", "input_message": "x"}
            assert (await client.post("/api/tasks", json=body, headers=agent)).status_code == 201
            r = await client.patch("/api/tasks/t1", json={"cost_usd": 10}, headers=agent)
            assert r.status_code == 200
            # Six deliveries (3 alerts x 2 channels), all sent and hanging at the receiver.
            await receiver.wait_for(6, timeout=60)
        finally:
            _kill(proc, signal.SIGKILL)
        receiver.default = 200
        proc = _serve(env, port, log)
        try:
            await _up(client, proc, log)
            async with asyncio.timeout(90):
                while True:
                    tries = await _all_attempts(client, admin)
                    states = {(t["delivery_id"]): t["delivery_state"] for t in tries}
                    if len(states) == 6 and set(states.values()) == {"delivered"}:
                        break
                    await asyncio.sleep(0.5)
        finally:
            _kill(proc, signal.SIGINT)
    # Every delivery made; the receiver got exactly one request per attempt record.
    records = Counter((t["alert_id"], t["channel_id"]) for t in tries)
    got = Counter(
        (json.loads(r.body)["alert_id"], r.path.rsplit("/", 1)[-1]) for r in receiver.requests
    )
    assert got == records
    assert len(records) == 6
    for t in tries:
        if t["status_code"] != 200:
            assert t["error"].startswith("interrupted"), t
    assert sum(1 for t in tries if t["status_code"] == 200) == 6
