"""The migrations build exactly the schema the models describe, on both backends.

Several migrations land in parallel branches; a column or index that a model gained
without a migration (or the reverse) would only show up on a database built by one of
them, so this compares the migrated test database with the models.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

import dashboard_api.db.models  # noqa: F401 - every table registered on the metadata
from dashboard_api.db.base import Base
from dashboard_api.db.dialect import require_supported_server
from tests.support.env import Backend

# Made by migrations on PostgreSQL only, outside the models: the trigram index behind `q`
# (an extension's operator class, which SQLite has no equivalent of).
POSTGRES_ONLY_INDEXES = {"ix_tasks_input_trgm"}


async def test_migrations_match_the_models(backend: Backend) -> None:
    engine = create_async_engine(backend.database_url)

    def diff(sync_conn: Any) -> list[Any]:
        with warnings.catch_warnings():
            # SQLite cannot reflect expression indexes; PostgreSQL compares them.
            warnings.simplefilter("ignore")
            return list(compare_metadata(MigrationContext.configure(sync_conn), Base.metadata))

    try:
        async with engine.connect() as conn:
            found = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    found = [
        d for d in found if not (d[0] == "remove_index" and d[1].name in POSTGRES_ONLY_INDEXES)
    ]
    assert found == []


def test_migrations_refuse_a_postgresql_older_than_14() -> None:
    require_supported_server("postgresql", (15, 4))
    require_supported_server("postgresql", (14, 0))
    require_supported_server("sqlite", (3, 31, 1))
    with pytest.raises(
        RuntimeError, match=r"PostgreSQL 14 or later is required; the server is 13\.9\."
    ):
        require_supported_server("postgresql", (13, 9))
