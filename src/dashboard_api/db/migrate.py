"""Run Alembic migrations programmatically (used by `serve`, `migrate` and the tests)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the packaged migrations and the given database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def upgrade_to_head(url: str) -> None:
    """Migrate the database to the newest revision of every branch (idempotent).

    Alembic drives its own event loop, so from inside a running loop it runs in a thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(alembic_config(url), "heads")
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(command.upgrade, alembic_config(url), "heads").result()


async def upgrade_to_head_async(url: str) -> None:
    """The same, awaitable without blocking the caller's loop."""
    await asyncio.to_thread(command.upgrade, alembic_config(url), "heads")
