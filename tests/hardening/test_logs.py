"""Secrets never reach the logs of a real server: `dashboard-api serve` with its stderr captured."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import websockets

from dashboard_api.db.migrate import upgrade_to_head
from tests.support.servers import free_port
from tests.support.tokens import create_tokens


def test_query_string_and_header_tokens_are_redacted_from_access_logs(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'logs.db'}"
    upgrade_to_head(url)
    tokens = create_tokens(url)
    port = free_port()
    out, err = (tmp_path / "stdout.log").open("wb"), (tmp_path / "stderr.log").open("wb")
    env = {
        **os.environ,
        "DASHBOARD_DATABASE_URL": url,
        "DASHBOARD_LOG_LEVEL": "INFO",
        "DASHBOARD_TOKEN_CACHE_SECONDS": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard_api", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=out,
        stderr=err,
    )
    base = f"http://127.0.0.1:{port}"
    other_secret = "S3cretValueNeverLogged"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        user = tokens["user"]
        assert httpx.get(f"{base}/api/tasks?token={user}").status_code in (200, 401)
        r = httpx.get(f"{base}/api/tasks", headers={"Authorization": f"Bearer {user}"})
        assert r.status_code == 200
        r = httpx.get(f"{base}/api/tasks?access_token={other_secret}&q=x&api_key={other_secret}")
        assert r.status_code == 401
        assert httpx.get(f"{base}/api/tasks/none?token={tokens['admin']}").status_code in (401, 404)

        async def ws() -> None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token={user}") as conn:
                await conn.send('{"type":"ping"}')
                assert "pong" in await conn.recv()

        asyncio.run(ws())
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(20)
        out.close()
        err.close()
    logs = (tmp_path / "stderr.log").read_text() + (tmp_path / "stdout.log").read_text()
    assert "/api/tasks" in logs, "the access log did not record the requests"
    assert "/ws" in logs
    for name, token in tokens.items():
        assert token[len("dash_") :] not in logs, f"the {name} token leaked into the logs"
    assert other_secret not in logs
