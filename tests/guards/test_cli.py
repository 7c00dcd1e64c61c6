"""`dashboard-api budgets list` and `dashboard-api alerts test CHANNEL`, as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable

import httpx
import pytest

from tests.guards.helpers import put_budget, register, set_cost
from tests.guards.receiver import running_receiver
from tests.support.env import Backend

pytestmark = pytest.mark.slow
Auth = Callable[[str], dict[str, str]]


async def _cli(backend: Backend, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    env["DASHBOARD_DATABASE_URL"] = backend.database_url
    env["DASHBOARD_ALERTS_ALLOW_PRIVATE_URLS"] = "true"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dashboard_api", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_budgets_list_and_alerts_test(
    backend: Backend, client: httpx.AsyncClient, auth: Auth
) -> None:
    await put_budget(client, auth("admin"), "team-a", limit_usd=2, scope={"agent_type": "coder"})
    await register(client, auth("agent"), "t1")
    await set_cost(client, auth("agent"), "t1", 1.75)
    code, out, err = await _cli(backend, "budgets", "list")
    assert code == 0, err
    assert "team-a  warning" in out
    assert "$1.750000 of $2.00" in out
    assert "agent_type=coder" in out

    async with running_receiver(script=[200, 500]) as receiver:
        r = await client.put(
            "/api/alerts/channels/hook",
            json={"type": "webhook", "url": receiver.url, "secret": "k"},
            headers=auth("admin"),
        )
        assert r.status_code == 200
        code, out, err = await _cli(backend, "alerts", "test", "hook")
        assert code == 0, err
        assert out.startswith("delivered to hook: HTTP 200")
        body = json.loads(receiver.requests[0].body)
        assert body["kind"] == "test"
        assert receiver.requests[0].headers["x-dashboard-signature"].startswith("sha256=")
        code, out, err = await _cli(backend, "alerts", "test", "hook")
        assert code == 1
        assert (
            err.strip()
            == "not delivered to hook: HTTP 500 (after " + err.split("(after ")[1].strip()
        )
    code, out, err = await _cli(backend, "alerts", "test", "nope")
    assert code == 1
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
