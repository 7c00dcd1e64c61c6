"""PostgreSQL's one-statement insert of a row and the rows that go with it
(`Dialect.insert_with_rows`): data-modifying CTEs.

A task registration wrote its task, its first status event and its analytics pending
row as three statements, each a round trip and ~100 µs of SQLAlchemy; as one statement
they are one of each. The dependent rows are inserted `FROM` the first insert's
RETURNING, so they are written exactly when it is (an existing key: nothing at all).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Select, Table, bindparam, cast, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

# A statement's shape: the table and its columns given, then each dependent row's.
Shape = tuple[Table, tuple[str, ...], tuple[tuple[Table, tuple[str, ...]], ...]]


def _param(index: int, column: str) -> str:
    return f"r{index}_{column}"


@functools.lru_cache(maxsize=16)
def insert_with_statement(shape: Shape) -> Select[Any]:
    """WITH h AS (INSERT INTO table ... ON CONFLICT (primary key) DO NOTHING RETURNING
    key), r0 AS (INSERT INTO ... SELECT :r0_... FROM h), ... SELECT key FROM h; built
    once per shape, values bound at execution (typed binds: JSON and timestamps go
    through the columns' own conversions, and the CASTs give PostgreSQL each type)."""
    table, columns, dependents = shape
    key = list(table.primary_key.columns)
    head = (
        postgresql.insert(table)
        .values({c: bindparam(c, type_=table.c[c].type) for c in columns})
        .on_conflict_do_nothing(index_elements=key)
        .returning(*key)
        .cte("h")
    )
    stmt = select(*head.c)
    for index, (dependent, names) in enumerate(dependents):
        values = select(
            *(
                cast(bindparam(_param(index, n), type_=dependent.c[n].type), dependent.c[n].type)
                for n in names
            )
        ).select_from(head)
        stmt = stmt.add_cte(insert(dependent).from_select(list(names), values).cte(f"r{index}"))
    return stmt


def insert_with_params(
    values: Mapping[str, Any], rows: Sequence[tuple[Table, Mapping[str, Any]]]
) -> dict[str, Any]:
    """The statement's parameters: the row's values, each dependent row's by its index."""
    params = dict(values)
    for index, (_, row) in enumerate(rows):
        params.update({_param(index, n): v for n, v in row.items()})
    return params


def shape_of(
    table: Table, values: Mapping[str, Any], rows: Sequence[tuple[Table, Mapping[str, Any]]]
) -> Shape:
    return (table, tuple(values), tuple((t, tuple(row)) for t, row in rows))


async def insert_with_rows(
    self: object,
    session: AsyncSession,
    table: Table,
    values: dict[str, Any],
    rows: Sequence[tuple[Table, dict[str, Any]]],
) -> bool:
    """`PostgreSQLDialect.insert_with_rows` (defined here, where its statement is): the
    row and its dependent rows in one statement; whether the row was inserted."""
    stmt = insert_with_statement(shape_of(table, values, rows))
    return (await session.execute(stmt, insert_with_params(values, rows))).first() is not None
