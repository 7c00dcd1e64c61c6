"""The dialect of a database: chosen once from its URL, carried by its sessions."""

from __future__ import annotations

from typing import cast

from sqlalchemy.engine.interfaces import Dialect as SADialect
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect.base import Dialect
from dashboard_api.db.dialect.postgresql import PostgreSQLDialect
from dashboard_api.db.dialect.sqlite import SQLiteDialect

POSTGRESQL = PostgreSQLDialect()
SQLITE = SQLiteDialect()
_BY_NAME: dict[str, Dialect] = {d.backend: d for d in (POSTGRESQL, SQLITE)}

# Where a session carries its database's dialect (Database.configure_sessions keeps it).
SESSION_KEY = "dashboard_dialect"


def dialect_named(name: str) -> Dialect:
    """The dialect of a SQLAlchemy dialect name ('postgresql', 'sqlite')."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"no dialect for the {name!r} backend") from None


def dialect_serving(dialect: SADialect) -> Dialect:
    """The dialect of a connection's SQLAlchemy dialect (column types are handed one)."""
    return dialect_named(dialect.name)


def dialect_for_url(url: str) -> Dialect:
    """The dialect of a database URL (`sqlite+aiosqlite:///...` or `postgresql+asyncpg://...`)."""
    return SQLITE if url.startswith("sqlite") else POSTGRESQL


def dialect_of(session: AsyncSession) -> Dialect:
    """The dialect of the database this session talks to."""
    dialect = session.info.get(SESSION_KEY)
    if dialect is None:  # a session made outside `Database` (tools, tests)
        dialect = dialect_serving(session.get_bind().dialect)
    return cast(Dialect, dialect)
