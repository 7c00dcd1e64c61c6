"""Bearer tokens: 401 for missing/bad/revoked tokens, 403 by role, digests only, the CLI."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from typer.testing import CliRunner

from dashboard_api.cli import app as cli_app
from tests.support.tokens import Tokens, make_token

Headers = Callable[[str], dict[str, str]]

TASK = {"task_id": "t-auth", "agent_type": "coder", "input_message": "x"}


async def _seed_task(client: httpx.AsyncClient, auth: Headers, task_id: str = "t-auth") -> None:
    r = await client.post("/api/tasks", json={**TASK, "task_id": task_id}, headers=auth("agent"))
    assert r.status_code == 201, r.text


# (method, path, json body) for every endpoint family of docs/api.md §3.
READS = [
    ("GET", "/api/tasks", None),
    ("GET", "/api/tasks/t-auth", None),
    ("GET", "/api/tasks/t-auth/logs/full", None),
]
PRODUCE = [
    ("POST", "/api/tasks", {"task_id": "t-new", "agent_type": "coder", "input_message": "y"}),
    ("PATCH", "/api/tasks/t-auth", {"result": "r"}),
    ("POST", "/api/tasks/t-auth/output", {"content": "line"}),
    ("POST", "/api/tasks/claim", {"agent_type": "nobody", "agent": "a1"}),
]
CANCEL = [("POST", "/api/tasks/t-auth/cancel", None)]
ALL = READS + PRODUCE + CANCEL


def _assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 401


async def test_missing_or_bad_token_is_401(client: httpx.AsyncClient, auth: Headers) -> None:
    await _seed_task(client, auth)
    for method, path, body in ALL:
        for headers in (
            {},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer dash_not-a-real-token"},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            {"Authorization": "dash_bare"},
        ):
            _assert_401(await client.request(method, path, json=body, headers=headers))


async def test_revoked_token_is_401(app: FastAPI, client: httpx.AsyncClient) -> None:
    from dashboard_api.services.tokens import create_token, revoke_token
    from dashboard_api.timeutil import SystemClock

    db = app.state.ctx.db
    async with db.write() as session:
        token, row = await create_token(
            session, user_id="carol", role="user", now=SystemClock().now()
        )
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/tasks", headers=headers)).status_code == 200
    async with db.write() as session:
        await revoke_token(session, token_id=row.token_id, now=SystemClock().now())
    _assert_401(await client.get("/api/tasks", headers=headers))


def _expected(role: str, family: str) -> bool:
    allowed = {
        "read": {"admin", "user", "agent"},
        "produce": {"admin", "agent"},
        "cancel": {"admin", "user"},
    }
    return role in allowed[family]


@pytest.mark.parametrize("role", ["admin", "user", "agent"])
async def test_roles(client: httpx.AsyncClient, auth: Headers, role: str) -> None:
    families = [("read", e) for e in READS] + [("produce", e) for e in PRODUCE]
    families += [("cancel", e) for e in CANCEL]
    for family, (method, path, body) in families:
        if path.startswith("/api/tasks/t-auth"):
            # A fresh queued task each time, so that an allowed request can succeed.
            await client.post(
                "/api/tasks", json={**TASK, "task_id": "t-auth"}, headers=auth("agent")
            )
        r = await client.request(method, path, json=body, headers=auth(role))
        if _expected(role, family):
            assert r.status_code < 400 or r.status_code == 409, (role, method, path, r.text)
        else:
            assert r.status_code == 403, (role, method, path, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")


async def test_user_cannot_produce_agent_reads_user_cancels(
    client: httpx.AsyncClient, auth: Headers
) -> None:
    await _seed_task(client, auth)
    r = await client.post("/api/tasks", json=TASK | {"task_id": "u1"}, headers=auth("user"))
    assert r.status_code == 403
    assert (await client.get("/api/tasks/t-auth", headers=auth("agent"))).status_code == 200
    r = await client.post("/api/tasks/t-auth/cancel", headers=auth("agent"))
    assert r.status_code == 403
    r = await client.post("/api/tasks/t-auth/cancel", headers=auth("user"))
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"


async def test_tokens_are_stored_hashed(app: FastAPI, tokens: Tokens) -> None:
    clear = [tokens.admin, tokens.user, tokens.other_user, tokens.agent]
    async with app.state.ctx.db.read() as session:
        rows = (await session.execute(text("SELECT * FROM api_tokens"))).all()
    assert len(rows) == 4
    dump = repr([tuple(r) for r in rows])
    for token in clear:
        assert token not in dump
        # Not even the secret part without its prefix.
        assert token.removeprefix("dash_") not in dump


async def test_new_token_works_immediately(app: FastAPI, client: httpx.AsyncClient) -> None:
    token = await make_token(app, role="agent", user_id="bot")
    r = await client.get("/api/tasks", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


# --- the CLI ---------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    return {"DASHBOARD_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"}


def _run(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli_app, list(args), env=env)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.stdout


def test_token_cli_create_list_revoke(cli_env: dict[str, str]) -> None:
    _run(cli_env, "migrate")
    out = _run(cli_env, "token", "create", "--user", "dana", "--role", "agent")
    token = out.strip().splitlines()[-1]
    assert re.fullmatch(r"dash_[A-Za-z0-9_-]{20,}", token), out
    out2 = _run(cli_env, "token", "create", "--user", "eve", "--role", "user")
    token2 = out2.strip().splitlines()[-1]
    assert token2 != token

    listing = _run(cli_env, "token", "list")
    assert "dana" in listing
    assert "eve" in listing
    assert token not in listing
    assert token2 not in listing
    lines = [ln for ln in listing.splitlines() if "dana" in ln]
    token_id = lines[0].split()[0]

    assert token_id in _run(cli_env, "token", "revoke", token_id)
    listing = _run(cli_env, "token", "list")
    dana = next(ln for ln in listing.splitlines() if "dana" in ln)
    assert "revoked -" not in dana
    eve = next(ln for ln in listing.splitlines() if "eve" in ln)
    assert "revoked -" in eve

    result = CliRunner().invoke(cli_app, ["token", "revoke", "no-such-id"], env=cli_env)
    assert result.exit_code != 0
    result = CliRunner().invoke(
        cli_app, ["token", "create", "--user", "x", "--role", "root"], env=cli_env
    )
    assert result.exit_code != 0


async def test_cli_token_authenticates_and_revocation_applies(tmp_path: Path) -> None:
    """A token made by the CLI works over HTTP; once revoked by the CLI it is 401."""
    from asgi_lifespan import LifespanManager

    from dashboard_api.app import create_app
    from dashboard_api.settings import Settings

    env = {"DASHBOARD_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli2.db'}"}
    _run_in_thread(env, "migrate")
    token = _run_in_thread(env, "token", "create", "--user", "fred", "--role", "user")
    token = token.strip().splitlines()[-1]
    settings = Settings(_env_file=None, database_url=env["DASHBOARD_DATABASE_URL"])
    settings = settings.model_copy(update={"token_cache_seconds": 0})
    application = create_app(settings)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            headers = {"Authorization": f"Bearer {token}"}
            assert (await client.get("/api/tasks", headers=headers)).status_code == 200
            listing = _run_in_thread(env, "token", "list")
            token_id = next(ln for ln in listing.splitlines() if "fred" in ln).split()[0]
            _run_in_thread(env, "token", "revoke", token_id)
            _assert_401(await client.get("/api/tasks", headers=headers))


def _run_in_thread(env: dict[str, str], *args: str) -> str:
    """The CLI calls asyncio.run, which cannot nest in this test's loop: use a thread."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_run, env, *args).result()
