"""Real tokens of every role, stored in the database the app under test uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI

from dashboard_api.db.engine import Database
from dashboard_api.services.tokens import create_token
from dashboard_api.timeutil import SystemClock
from tests.support.env import run_sync

# `auth("agent")` gives the Authorization header of that role's token.
Headers = Callable[[str], dict[str, str]]

# name, role, user id: the tokens every test app gets.
ROLE_USERS = (
    ("admin", "admin", "root"),
    ("user", "user", "alice"),
    ("other_user", "user", "bob"),
    ("agent", "agent", "agent-1"),
)


async def make_token(app: FastAPI, *, role: str, user_id: str) -> str:
    """A real token stored in the app's database."""
    db = app.state.ctx.db
    async with db.write() as session:
        token, _ = await create_token(session, user_id=user_id, role=role, now=SystemClock().now())  # type: ignore[arg-type]
    return token


@dataclass
class Tokens:
    admin: str
    user: str
    other_user: str
    agent: str

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


async def make_tokens(app: FastAPI) -> Tokens:
    """A token of every role (and a second user) in the app's database."""
    made = {name: await make_token(app, role=role, user_id=user) for name, role, user in ROLE_USERS}
    return Tokens(**made)


async def _create_tokens(url: str) -> dict[str, str]:
    db = Database(url)
    out: dict[str, str] = {}
    try:
        async with db.write() as session:
            for name, role, user in ROLE_USERS:
                out[name], _ = await create_token(
                    session,
                    user_id=user,
                    role=role,  # type: ignore[arg-type]
                    now=SystemClock().now(),
                )
    finally:
        await db.dispose()
    return out


def create_tokens(url: str) -> dict[str, str]:
    """The same for a server in another thread or process: by database URL, from sync code."""
    result: dict[str, str] = run_sync(_create_tokens(url))
    return result
