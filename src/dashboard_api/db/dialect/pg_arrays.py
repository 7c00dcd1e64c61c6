"""PostgreSQL statements over one array parameter per column (`unnest`): any number of
rows in one round trip and one plan."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    LargeBinary,
    Table,
    TextClause,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB


def _array_type(column: Any) -> str:
    type_ = getattr(column.type, "impl_instance", column.type)  # a TypeDecorator's storage type
    if isinstance(type_, BigInteger):
        return "bigint[]"
    if isinstance(type_, Integer):  # SmallInteger and Integer both fit
        return "integer[]"
    if isinstance(type_, LargeBinary):
        return "bytea[]"
    if isinstance(type_, Boolean):
        return "boolean[]"
    if isinstance(type_, DateTime):
        return "timestamptz[]" if type_.timezone else "timestamp[]"
    if isinstance(type_, JSON):
        stored = getattr(type_, "_variant_mapping", {}).get("postgresql", type_)
        return "jsonb[]" if isinstance(stored, JSONB) else "json[]"
    return "text[]"


def _json_text(value: Any) -> str | None:
    """A JSON column's value as the text its array parameter takes (None: SQL NULL)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # what orjson refuses and json takes (integer keys, huge integers)
        return json.dumps(value)


def column_arrays(
    table: Table, names: Sequence[str], rows: Sequence[Sequence[Any]] | Sequence[dict[str, Any]]
) -> dict[str, list[Any]]:
    """The parameters `:p0`, `:p1`, ... of `unnest_arrays`: one list per column of
    `names` (rows are sequences in that order, or dicts by name), JSON columns' values
    as JSON text."""
    params: dict[str, list[Any]] = {}
    for i, name in enumerate(names):
        key: Any = name if rows and isinstance(rows[0], dict) else i
        values = [r[key] for r in rows]
        if isinstance(table.c[name].type, JSON):
            values = [_json_text(v) for v in values]
        params[f"p{i}"] = values
    return params


def quoted(names: Sequence[str], prefix: str = "") -> str:
    """The column names, quoted, comma-separated (each after `prefix`)."""
    return ", ".join(f'{prefix}"{n}"' for n in names)


def unnest_arrays(
    table: Table, names: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> tuple[str, dict[str, list[Any]]]:
    """`unnest(...)` of one array parameter per column (`:p0`, `:p1`, ...), and its
    parameters for these rows."""
    arrays = ", ".join(f"CAST(:p{i} AS {_array_type(table.c[n])})" for i, n in enumerate(names))
    return f"unnest({arrays})", column_arrays(table, names, rows)


@functools.lru_cache(maxsize=64)
def insert_rows_sql(
    table: Table,
    names: tuple[str, ...],
    constants: tuple[str, ...],
    returning_keys: tuple[str, ...] = (),
) -> TextClause:
    """INSERT … SELECT from one array per column of `names` (`:p0`, ...) and one value
    per constant (`:c0`, ...): any number of rows in one round trip, inserted in the
    arrays' order (built once per shape). With `returning_keys`, rows whose key is there
    already are skipped (ON CONFLICT DO NOTHING) and the keys of those inserted returned."""
    source, _ = unnest_arrays(table, names, [])
    shared = [f"CAST(:c{i} AS {_array_type(table.c[n])[:-2]})" for i, n in enumerate(constants)]
    sql = (
        f"INSERT INTO {table.name} ({quoted([*names, *constants])}) "  # noqa: S608 - names come from the table
        f"SELECT {', '.join([quoted(names, 'u.'), *shared])} FROM {source} AS u({quoted(names)})"
    )
    if returning_keys:
        keys = quoted(returning_keys)
        sql += f" ON CONFLICT ({keys}) DO NOTHING RETURNING {keys}"
    return text(sql)


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
