"""Bulk loading for seeds and back-fills: COPY on PostgreSQL, the driver's executemany on SQLite.

Each step is the dialect's (db/dialect/): these are the session-first forms the loaders
call, in the order they run them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import dialect_of


async def prepare_bulk_load(session: AsyncSession) -> None:
    """Tune the current transaction for loading many rows."""
    await dialect_of(session).prepare_bulk_load(session)


async def finish_bulk_load(session: AsyncSession) -> None:
    """Undo what `prepare_bulk_load` set beyond the transaction (call it in a finally)."""
    await dialect_of(session).finish_bulk_load(session)


async def drop_secondary_indexes(session: AsyncSession, tables: Sequence[str]) -> list[str]:
    """Drop the indexes of `tables` that back no constraint (and, on PostgreSQL, their
    foreign keys); the statements that put them back. For a load that at least doubles a
    table."""
    return await dialect_of(session).drop_secondary_indexes(session, tables)


async def rebuild_indexes(session: AsyncSession, definitions: Sequence[str]) -> None:
    """Run the statements `drop_secondary_indexes` returned."""
    await dialect_of(session).rebuild_indexes(session, definitions)


async def bulk_insert(
    session: AsyncSession, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert many rows fast. Values must already be in storage form (aware UTC datetimes)."""
    await dialect_of(session).bulk_insert(session, table, columns, rows)


async def insert_driver_rows(
    session: AsyncSession, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Insert rows already in the driver's storage form (SQLite: services/seed_rows.py)."""
    await dialect_of(session).insert_driver_rows(session, table, columns, rows)


def copies_binary(session: AsyncSession) -> bool:
    """Whether `copy_binary` works here (PostgreSQL)."""
    return dialect_of(session).copies_binary


async def copy_binary(
    session: AsyncSession, table: str, columns: Sequence[str], data: Iterable[bytes]
) -> None:
    """Load binary COPY data (db/pgcopy.py), given in parts, into `table`."""
    await dialect_of(session).copy_binary(session, table, columns, data)
