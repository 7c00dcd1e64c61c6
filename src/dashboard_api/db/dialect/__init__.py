"""Every difference between PostgreSQL and SQLite, in one place: the `Dialect`.

A `Database` chooses its dialect once, from its URL, and every session it makes carries
it (`dialect_of(session)`). `base.py` says what a dialect does; `postgresql.py` and
`sqlite.py` do it; `locks.py` holds the named locks that decide who leads a periodic
job; `values.py` reads what the dialects' aggregates give, the same on both.
"""

from __future__ import annotations

from dashboard_api.db.dialect.base import (
    WRITE_OPTION,
    DatabaseFault,
    Dialect,
    ExportFormat,
    LineField,
    LineKind,
    OutputAppend,
)
from dashboard_api.db.dialect.choice import (
    POSTGRESQL,
    SESSION_KEY,
    SQLITE,
    dialect_for_url,
    dialect_named,
    dialect_of,
    dialect_serving,
)
from dashboard_api.db.dialect.values import (
    bytes_list,
    escape_like,
    int_list,
    int_pairs_params,
    int_rows,
)


def require_supported_server(dialect_name: str, version: tuple[int | str, ...] | None) -> None:
    """Refuse (with the reason) a server older than the service needs (migrations call it)."""
    dialect_named(dialect_name).check_server_version(version)


__all__ = [
    "POSTGRESQL",
    "SESSION_KEY",
    "SQLITE",
    "WRITE_OPTION",
    "DatabaseFault",
    "Dialect",
    "ExportFormat",
    "LineField",
    "LineKind",
    "OutputAppend",
    "bytes_list",
    "dialect_for_url",
    "dialect_named",
    "dialect_of",
    "dialect_serving",
    "escape_like",
    "int_list",
    "int_pairs_params",
    "int_rows",
    "require_supported_server",
]
