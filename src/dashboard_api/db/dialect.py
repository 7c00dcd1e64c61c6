"""Every difference between PostgreSQL and SQLite, in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, Table, func, literal, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute


def backend_of(session: AsyncSession) -> str:
    """'postgresql' or 'sqlite'."""
    return session.get_bind().dialect.name


def upsert(session: AsyncSession, table: Table) -> Any:
    """An INSERT that supports `.on_conflict_do_update` / `.on_conflict_do_nothing`."""
    if backend_of(session) == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def lock_skip_locked(session: AsyncSession, stmt: Select[Any]) -> Select[Any]:
    """Row-lock the selected rows, skipping those other transactions hold (PostgreSQL).

    SQLite has no row locks; its writers are serialized (Database.write), which gives
    the same guarantee.
    """
    if backend_of(session) == "postgresql":
        return stmt.with_for_update(skip_locked=True)
    return stmt


def lock_for_update(session: AsyncSession, stmt: Select[Any]) -> Select[Any]:
    """Row-lock the selected rows until commit (PostgreSQL); SQLite's single writer suffices."""
    if backend_of(session) == "postgresql":
        return stmt.with_for_update()
    return stmt


def escape_like(needle: str) -> str:
    """Make `%`, `_` and the escape character literal in a LIKE pattern."""
    return needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains_ci(
    session: AsyncSession, column: ColumnElement[str] | QueryableAttribute[str], needle: str
) -> ColumnElement[bool]:
    """Case-insensitive substring match with `%` and `_` taken literally."""
    pattern = f"%{escape_like(needle)}%"
    if backend_of(session) == "postgresql":
        return column.ilike(pattern, escape="\\")
    # SQLite's LIKE folds ASCII only; lower() on both sides keeps the ASCII fast path and
    # the registered casefold function covers the rest of Unicode.
    return func.dashboard_casefold(column).like(literal(pattern.casefold()), escape="\\")


def advisory_xact_lock_sql(session: AsyncSession, key: int) -> Any:
    """A statement that takes a lock held until the transaction ends (PostgreSQL), or None.

    SQLite needs none: `Database.write()` transactions are serialized already.
    """
    if backend_of(session) == "postgresql":
        return text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=key)
    return None
