"""`dashboard-api serve` as a real process: demo mode, and `--workers` (refused or shared
through Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets

from tests.support.env import PG_HOST, PG_PORT, REDIS_URL, pg_admin, require_services, run_sync
from tests.support.servers import free_port

pytestmark = pytest.mark.slow


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dashboard_api", *args]


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Server:
    """A `serve` subprocess; the admin token it prints is read from its stdout."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            _cli(*args),
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.admin_token: str | None = None
        self.lines: list[str] = []  # stdout up to the admin token

    async def read_token(self, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                line = (await loop.run_in_executor(None, self.proc.stdout.readline)).decode()
                if not line:
                    raise AssertionError(f"serve exited: {self.stderr_tail()}")
                self.lines.append(line)
                if "admin token:" in line:
                    self.admin_token = line.split()[-1]
                    return self.admin_token

    def stderr_tail(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return "(running)"
        return self.proc.stderr.read().decode()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


async def _wait_up(client: httpx.AsyncClient, server: Server, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while True:
            assert server.proc.poll() is None, server.stderr_tail()
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/api/health")).status_code == 200:
                    return
            await asyncio.sleep(0.1)


def test_workers_need_redis_and_postgresql(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    r = subprocess.run(
        _cli("serve", "--workers", "2"), env=_env(DASHBOARD_DATABASE_URL=db),
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert b"DASHBOARD_REDIS_URL" in r.stderr
    r = subprocess.run(
        _cli("serve", "--workers", "2"),
        env=_env(DASHBOARD_DATABASE_URL=db, DASHBOARD_REDIS_URL="redis://127.0.0.1:1/0"),
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert b"PostgreSQL" in r.stderr
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


async def _running_output(client: httpx.AsyncClient) -> dict[str, int]:
    """The running tasks' output seqs (the newest 100)."""
    r = await client.get("/api/tasks", params={"status": "running", "per_page": 100})
    assert r.status_code == 200, r.text
    return {t["task_id"]: t["output_seq"] for t in r.json()["items"]}


async def _one_cancelled(client: httpx.AsyncClient) -> bool:
    """Ask the tasks being worked now (their output grows) to cancel: whether one of them
    ended cancelled within 10 s."""
    before = await _running_output(client)
    await asyncio.sleep(1.0)
    after = await _running_output(client)
    asked = []
    for task_id in [t for t, seq in after.items() if seq > before.get(t, seq)][:5]:
        r = await client.post(f"/api/tasks/{task_id}/cancel")
        if r.status_code == 200 and r.json()["status"] == "running":
            asked.append(task_id)
    for _ in range(50):
        if not asked:
            return False
        await asyncio.sleep(0.2)
        statuses = [(await client.get(f"/api/tasks/{t}")).json()["status"] for t in asked]
        if "cancelled" in statuses:
            return True
        asked = [t for t, status in zip(asked, statuses, strict=True) if status == "running"]
    return False


async def test_demo_mode_runs_live_tasks(tmp_path: Path) -> None:
    port = free_port()
    env = _env(
        DASHBOARD_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}",
        DASHBOARD_DEMO_TASKS="600",
        DASHBOARD_LOG_LEVEL="WARNING",
    )
    server = Server(["serve", "--demo", "--port", str(port)], env, tmp_path)
    try:
        token = await server.read_token()
        headers = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            await _wait_up(client, server)
            # Running tasks with live output (the agents stream at a human pace).
            live: dict[str, Any] | None = None
            async with asyncio.timeout(10):
                while live is None:
                    r = await client.get("/api/tasks", params={"status": "running", "per_page": 50})
                    assert r.status_code == 200, r.text
                    live = next((t for t in r.json()["items"] if t["output_seq"] > 0), None)
                    await asyncio.sleep(0.2)
            log = (await client.get(f"/api/tasks/{live['task_id']}/logs/full")).json()
            assert log["chunks"]
            assert log["output"]
            # The seeded history and the other features' demo data are there.
            listing = (await client.get("/api/tasks", params={"per_page": 1})).json()
            assert listing["total"] >= 600
            agents = (await client.get("/api/agents")).json()["items"]
            assert any(a["status"] in ("online", "busy") for a in agents)
            for path in ("/api/conversations", "/api/webhooks/events", "/api/sources"):
                r = await client.get(path)
                assert r.status_code == 200, (path, r.text)
                assert r.json()["items"], path
            oauth = (await client.get("/api/oauth/status")).json()["platforms"]
            assert all(p["installed"] for p in oauth)
            # Tasks end, with tokens and a cost.
            async with asyncio.timeout(30):
                while True:
                    r = await client.get(
                        "/api/tasks",
                        params={
                            "status": "completed",
                            "created_after": listing["items"][0]["created_at"],
                        },
                    )
                    done = [t for t in r.json()["items"] if t["output_seq"] > 0]
                    if done:
                        break
                    await asyncio.sleep(0.3)
            assert done[0]["output_tokens"] > 0
            assert done[0]["cost_usd"] > 0
            # A cancel request is honoured by the agent working the task. Only tasks whose
            # output grows are being worked (a seeded running task waits for an agent to
            # adopt it), and a worked task may still finish, or its agent die
            # (DEMO_DEATH_RATE), before the agent next looks: so the worked tasks of the
            # moment are asked, and again with new ones until one ends cancelled.
            async with asyncio.timeout(45):
                while not await _one_cancelled(client):
                    pass
    finally:
        server.stop()


@pytest.mark.parametrize("seeded", [False, True])
async def test_demo_if_empty_decides_by_tasks_not_by_file(tmp_path: Path, seeded: bool) -> None:
    """`make run` serves with --demo-if-empty: a database that exists but holds no task (a
    `token create` ran first) still gets the demo; one with tasks does not."""
    env = _env(
        DASHBOARD_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
        DASHBOARD_DEMO_TASKS="50",
        DASHBOARD_LOG_LEVEL="WARNING",
    )
    await _token(env, "user", tmp_path)
    if seeded:
        subprocess.run(_cli("seed", "--tasks", "3"), env=env, cwd=tmp_path, check=True, timeout=60)
    server = Server(["serve", "--demo-if-empty", "--port", str(free_port())], env, tmp_path)
    try:
        await server.read_token()
        demo = any("demo mode" in line for line in server.lines)
        assert demo is not seeded, server.lines
    finally:
        server.stop()


@pytest.fixture
def throwaway_pg() -> Iterator[str]:
    require_services()
    name = f"dash_workers_{uuid.uuid4().hex[:10]}"
    run_sync(pg_admin(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/{name}"
    run_sync(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _token(env: dict[str, str], role: str, cwd: Path) -> str:
    r = subprocess.run(
        _cli("token", "create", "--user", f"{role}-1", "--role", role),
        env=env, cwd=cwd, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    return r.stdout.decode().strip().splitlines()[-1]


async def test_two_workers_share_events_through_redis(throwaway_pg: str, tmp_path: Path) -> None:
    port = free_port()
    env = _env(
        DASHBOARD_DATABASE_URL=throwaway_pg,
        DASHBOARD_REDIS_URL=REDIS_URL,
        DASHBOARD_REDIS_PREFIX=f"dashtest:{uuid.uuid4().hex[:8]}:",
        DASHBOARD_LOG_LEVEL="WARNING",
        DASHBOARD_RATE_LIMIT_PER_MINUTE="0",
    )
    server = Server(["serve", "--workers", "2", "--port", str(port)], env, tmp_path)
    sockets: list[Any] = []
    try:
        await server.read_token()
        user = await _token(env, "user", tmp_path)
        agent = await _token(env, "agent", tmp_path)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await _wait_up(client, server)
            # Open connections until both processes hold some (the kernel decides which
            # process accepts; each replica's /api/status reports its own hub).
            per_process: dict[str, int] = {}
            while not (len(per_process) == 2 and all(per_process.values())):
                assert len(sockets) < 48, per_process
                for _ in range(4):
                    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?token={user}")
                    await ws.send(orjson.dumps({"type": "subscribe", "channel": "tasks"}).decode())
                    reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert reply["type"] == "subscribed", reply
                    sockets.append(ws)
                for _ in range(40):
                    async with httpx.AsyncClient(base_url=base, timeout=30) as fresh:
                        r = await fresh.get(
                            "/api/status", headers={"Authorization": f"Bearer {user}"}
                        )
                    body = r.json()
                    per_process[body["started_at"]] = body["realtime"]["connections"]
                    if len(per_process) == 2 and all(per_process.values()):
                        break
            ids = [f"w-{i}" for i in range(6)]
            for task_id in ids:
                r = await client.post(
                    "/api/tasks",
                    json={"task_id": task_id, "agent_type": "coder", "input_message": "x"},
                    headers={"Authorization": f"Bearer {agent}"},
                )
                assert r.status_code == 201, r.text
            for ws in sockets:
                seen: set[str] = set()
                async with asyncio.timeout(15):
                    while seen != set(ids):
                        event = orjson.loads(await ws.recv())
                        if event.get("type") == "task_status":
                            seen.add(event["task_id"])
    finally:
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()
        server.stop()
