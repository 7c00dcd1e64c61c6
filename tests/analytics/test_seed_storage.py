"""SQLite's seed inserts rows it made itself in the driver's storage form
(services/seed_rows.py), its secondary indexes dropped for the load: the stored rows must
be those SQLAlchemy stores for the same generated tasks, and the schema and the
connection as they were before."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.models import Task, TaskEvent
from dashboard_api.services.pricing import PriceTable
from dashboard_api.services.seed import seed_tasks
from dashboard_api.services.seed_data import TASK_COLUMNS, blocks, from_epoch_us
from tests.support.env import Backend

NOW = datetime(2026, 11, 25, 12, 34, 56, 789000, tzinfo=UTC)
_INSTANTS = {i for i, c in enumerate(TASK_COLUMNS) if c.endswith("_at")}
_METADATA = TASK_COLUMNS.index("metadata")


async def _stored(session: AsyncSession) -> tuple[list[Any], list[Any]]:
    conn = await session.connection()
    tasks = (await conn.exec_driver_sql("SELECT rowid, * FROM tasks ORDER BY rowid")).all()
    events = (await conn.exec_driver_sql("SELECT * FROM task_events ORDER BY event_id")).all()
    return [tuple(r) for r in tasks], [tuple(r) for r in events]


async def _schema(session: AsyncSession) -> list[Any]:
    conn = await session.connection()
    rows = await conn.exec_driver_sql("SELECT type, name, tbl_name, sql FROM sqlite_master")
    return sorted(tuple(r) for r in rows)


async def _pragma(session: AsyncSession, name: str) -> Any:
    conn = await session.connection()
    return (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one()


def _model_values(row: tuple[Any, ...]) -> dict[str, Any]:
    """A generated row as the model takes it: aware datetimes, the metadata a dict."""
    values = {
        c: (from_epoch_us(v) if i in _INSTANTS and v is not None else v)
        for i, (c, v) in enumerate(zip(TASK_COLUMNS, row, strict=True))
    }
    values[TASK_COLUMNS[_METADATA]] = {}
    return values


@pytest.mark.parametrize(("n", "chunk"), [(900, 97), (2500, 32768)])
async def test_sqlite_seed_stores_the_rows_sqlalchemy_stores(
    app: FastAPI, backend: Backend, n: int, chunk: int
) -> None:
    if backend.name != "sqlite":
        pytest.skip("PostgreSQL loads COPY data (tests/analytics/test_seed_rollups.py)")
    db = app.state.ctx.db
    prices = PriceTable(*app.state.ctx.settings.price_table())
    async with db.write() as session:
        schema = await _schema(session)
        cache_size = await _pragma(session, "cache_size")
        assert await seed_tasks(session, n=n, now=NOW, prices=prices, days=5, seed=11, chunk=chunk)
        assert await _pragma(session, "cache_size") == cache_size
    async with db.read() as session:
        seeded = await _stored(session)
        assert await _schema(session) == schema

    async with db.write() as session:
        await session.execute(delete(TaskEvent))
        await session.execute(delete(Task))
        for block in blocks(n, now=NOW, days=5, prices=prices, seed=11, chunk=chunk):
            rows = list(block.rows())
            await session.execute(insert(Task), [_model_values(row) for row, _ in rows])
            events = [
                {"task_id": task_id, "type": "status", "status": status, "at": from_epoch_us(at)}
                for _, evs in rows
                for task_id, status, at in evs
            ]
            await session.execute(insert(TaskEvent), events)
    async with db.read() as session:
        through_sqlalchemy = await _stored(session)

    assert len(seeded[0]) == n
    assert len(seeded[1]) > n
    assert seeded == through_sqlalchemy
