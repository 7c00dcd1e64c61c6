"""PostgreSQL statements over one array parameter per column (`unnest`): any number of
rows in one round trip and one plan."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Integer, LargeBinary, Table


def _array_type(column: Any) -> str:
    type_ = getattr(column.type, "impl_instance", column.type)  # a TypeDecorator's storage type
    if isinstance(type_, BigInteger):
        return "bigint[]"
    if isinstance(type_, Integer):  # SmallInteger and Integer both fit
        return "integer[]"
    if isinstance(type_, LargeBinary):
        return "bytea[]"
    return "text[]"


def quoted(names: Sequence[str], prefix: str = "") -> str:
    """The column names, quoted, comma-separated (each after `prefix`)."""
    return ", ".join(f'{prefix}"{n}"' for n in names)


def unnest_arrays(
    table: Table, names: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> tuple[str, dict[str, list[Any]]]:
    """`unnest(...)` of one array parameter per column (`:p0`, `:p1`, ...), and its
    parameters for these rows."""
    arrays = ", ".join(f"CAST(:p{i} AS {_array_type(table.c[n])})" for i, n in enumerate(names))
    params = {f"p{i}": [r[i] for r in rows] for i in range(len(names))}
    return f"unnest({arrays})", params


def unnest_insert(
    table: Table,
    keys: Sequence[str],
    names: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    on_conflict: str,
) -> tuple[str, dict[str, list[Any]]]:
    """INSERT … SELECT * FROM unnest(arrays) ON CONFLICT (keys) `on_conflict`, and its
    parameters: rows inserted in the given order."""
    source, params = unnest_arrays(table, names, rows)
    sql = (
        f"INSERT INTO {table.name} ({quoted(names)}) SELECT * FROM {source} "  # noqa: S608 - names come from the table
        f"ON CONFLICT ({quoted(keys)}) {on_conflict}"
    )
    return sql, params
