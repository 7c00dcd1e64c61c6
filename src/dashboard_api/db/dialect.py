"""Every difference between PostgreSQL and SQLite, in one place."""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    LargeBinary,
    Select,
    String,
    Table,
    and_,
    any_,
    bindparam,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute

# date_bin (the per-hour q counts, services/tasks/search.py) arrived in PostgreSQL 14.
MIN_POSTGRESQL = 14


def require_supported_server(dialect_name: str, version: tuple[int | str, ...] | None) -> None:
    """Refuse (with the reason) a PostgreSQL server older than the service needs."""
    if dialect_name != "postgresql" or not version or not isinstance(version[0], int):
        return
    if version[0] < MIN_POSTGRESQL:
        found = ".".join(map(str, version))
        raise RuntimeError(
            f"PostgreSQL {MIN_POSTGRESQL} or later is required; the server is {found}."
        )


def backend_of(session: AsyncSession) -> str:
    """'postgresql' or 'sqlite'."""
    return session.get_bind().dialect.name


def upsert(session: AsyncSession, table: Table) -> Any:
    """An INSERT that supports `.on_conflict_do_update` / `.on_conflict_do_nothing`."""
    if backend_of(session) == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def reuses_cte_results(session: AsyncSession) -> bool:
    """Whether a CTE referenced several times is computed once (PostgreSQL materializes
    it). SQLite evaluates it again at every reference: ~10x the time for the deep-page
    seek's descent (100+ ms a page even on a small database), while walking its index
    with OFFSET is cheap at the sizes one embedded process holds."""
    return backend_of(session) == "postgresql"


def indexes_substrings(session: AsyncSession) -> bool:
    """Whether `contains_ci` searches run on an index (PostgreSQL's trigram GIN), so that
    a second scan of a rare substring's matches is cheap; on SQLite every scan reads the
    whole table."""
    return backend_of(session) == "postgresql"


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
    session: AsyncSession,
    column: ColumnElement[str] | QueryableAttribute[str],
    needle: str,
    *,
    indexed: bool = True,
) -> ColumnElement[bool]:
    """Case-insensitive substring match with `%` and `_` taken literally. Not `indexed`:
    a trigram index cannot serve it (PostgreSQL), for a match tested on the few rows
    another condition selects (the planner would AND the index's whole bitmap in)."""
    pattern = f"%{escape_like(needle)}%"
    if backend_of(session) == "postgresql":
        if not indexed:
            column = column + literal_column("''")
        # The pattern goes into the statement's text (quoted by SQLAlchemy), not a bind
        # parameter: after five runs of a prepared statement PostgreSQL may switch to a
        # generic plan, which cannot know how rare the substring is and plans the trigram
        # search badly (2x slower for a common one in the benchmark). Other parameters
        # keep the compiled form cached.
        return column.ilike(literal(pattern, String, literal_execute=True), escape="\\")
    # SQLite's LIKE folds ASCII letters only; the registered casefold function covers all
    # of Unicode but is a Python call per row (2.7x the LIKE: 107-119 ms against 37-44
    # over 200,000 seeded tasks). A row LIKE matches with the casefolded pattern matches
    # (its ASCII letters fold alike either way, the rest equals the pattern's, and
    # casefolding is idempotent); a row it misses can match only through a character
    # outside ASCII, so only rows holding one (more bytes than characters) pay the call.
    folded = literal(pattern.casefold())
    return or_(
        column.like(folded, escape="\\"),
        and_(
            func.length(column) < func.length(cast(column, LargeBinary)),
            func.dashboard_casefold(column).like(folded, escape="\\"),
        ),
    )


def epoch_seconds_to_ts(
    session: AsyncSession, seconds: ColumnElement[Any] | QueryableAttribute[Any]
) -> ColumnElement[Any]:
    """The instant `seconds` (whole, since the epoch) as a value comparable with stored
    timestamps: timestamptz on PostgreSQL; on SQLite the stored text form without its
    fraction, which sorts just before every stored instant of that same second."""
    if backend_of(session) == "postgresql":
        return func.to_timestamp(seconds)
    return func.datetime(seconds, "unixepoch")


# --- analytics ---------------------------------------------------------------------------


def epoch_bucket(
    session: AsyncSession, column: ColumnElement[Any] | QueryableAttribute[Any], seconds: int
) -> ColumnElement[int]:
    """The start (whole seconds since the epoch) of the `seconds`-long block holding a time."""
    if backend_of(session) == "postgresql":
        epoch = func.extract("epoch", column)
        return cast(func.floor(epoch / seconds), BigInteger) * seconds
    # SQLite keeps UTC as naive text 'YYYY-MM-DD HH:MM:SS.ffffff'; strftime would round
    # the fraction (to ms), so it reads only the whole seconds.
    whole = cast(func.strftime("%s", func.substr(column, 1, 19)), Integer)
    return whole - (whole % seconds + seconds) % seconds


def hour_bin(
    session: AsyncSession, column: ColumnElement[Any] | QueryableAttribute[Any]
) -> ColumnElement[Any]:
    """The hour holding a stored instant, as a value to GROUP BY (cheap per row); read a
    group's with `hour_bin_seconds`. On PostgreSQL `epoch_bucket` computes in numeric
    (extract returns numeric): 0.3-0.5 µs a row, 40-70 ms of grouping 145,000 matches
    per hour, against 13-23 ms for date_bin's integer arithmetic on the timestamp. The
    origin precedes every storable instant (no bin before it to round) and is a whole
    number of hours from the epoch. On SQLite the stored text up to the hour
    ('YYYY-MM-DD HH'): no strftime per row."""
    if backend_of(session) == "postgresql":
        return func.date_bin(
            literal_column("interval '1 hour'"),
            column,
            literal_column("timestamptz '0001-01-01 00:00:00+00'"),
        )
    return func.substr(column, 1, 13)


def hour_bin_seconds(session: AsyncSession, value: ColumnElement[Any]) -> ColumnElement[int]:
    """A `hour_bin` value as whole seconds since the epoch (once per group, not per row)."""
    if backend_of(session) == "postgresql":
        return cast(func.extract("epoch", value), BigInteger)
    return cast(func.strftime("%s", value + literal(":00:00", String)), Integer)


def micros_between(
    session: AsyncSession,
    later: ColumnElement[Any] | QueryableAttribute[Any],
    earlier: ColumnElement[Any] | QueryableAttribute[Any],
) -> ColumnElement[int]:
    """Exact `later - earlier` in microseconds (integer arithmetic on both backends)."""
    if backend_of(session) == "postgresql":
        return cast(func.extract("epoch", later - earlier) * 1_000_000, BigInteger)

    # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds, then the six digits.
    def micros(col: Any) -> ColumnElement[int]:
        whole = cast(func.strftime("%s", func.substr(col, 1, 19)), Integer) * 1_000_000
        return whole + cast(func.substr(col, 21, 6), Integer)

    return micros(later) - micros(earlier)


_LOG_BIN_SQLITE = "dashboard_log_bin"


async def prepare_log_bin(session: AsyncSession, thresholds: Sequence[int]) -> None:
    """Make `log_bin` usable on this session's connection (registers a function on SQLite)."""
    if backend_of(session) == "postgresql":
        return

    def log_bin_fn(value: int | None) -> int | None:
        return None if value is None else bisect.bisect_right(thresholds, value)

    conn = await session.connection()
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    await driver.create_function(_LOG_BIN_SQLITE, 1, log_bin_fn, deterministic=True)


def log_bin(
    session: AsyncSession,
    value: ColumnElement[Any] | QueryableAttribute[Any],
    thresholds: Sequence[int],
) -> ColumnElement[int]:
    """How many of the sorted `thresholds` are <= value (`bisect_right`), in SQL."""
    if backend_of(session) == "postgresql":
        return func.width_bucket(value, _pg_int_array(tuple(thresholds)), type_=Integer)
    fn: ColumnElement[int] = getattr(func, _LOG_BIN_SQLITE)(value, type_=Integer)
    return fn


@functools.lru_cache(maxsize=8)
def _pg_int_array(values: tuple[int, ...]) -> ColumnElement[Any]:
    """A constant bigint[] written into the statement: prepared once per connection, it is
    not sent again with every execution (1,070 thresholds are 9 KB of Bind message)."""
    return literal_column("'{" + ",".join(str(int(v)) for v in values) + "}'::bigint[]")


def int_list_agg(
    session: AsyncSession, column: ColumnElement[Any] | QueryableAttribute[Any]
) -> ColumnElement[Any]:
    """An aggregate of a group's integers as a list (read it with `int_list`). Two of them
    in one query list their group's rows in the same order."""
    if backend_of(session) == "postgresql":
        return func.array_agg(column)
    return func.json_group_array(column)


def int_list(value: Any) -> list[int]:
    """The list an `int_list_agg` gave (an array on PostgreSQL, JSON text on SQLite)."""
    if isinstance(value, str):
        out: list[int] = orjson.loads(value)
        return out
    return list(value)


def int_rows_agg(
    session: AsyncSession, columns: Sequence[ColumnElement[Any]]
) -> ColumnElement[str]:
    """An aggregate of a group's rows of integers as one text value (read it with
    `int_rows`): a scalar subquery can then carry a whole small table in one column."""
    row: ColumnElement[Any] = cast(columns[0], String)
    for column in columns[1:]:
        row = row + literal(":", String) + cast(column, String)
    if backend_of(session) == "postgresql":
        return func.string_agg(row, literal(",", String), type_=String)
    return func.group_concat(row, literal(",", String), type_=String)


def int_rows(value: str | None) -> list[list[int]]:
    """The rows an `int_rows_agg` gave (NULL for no rows)."""
    if not value:
        return []
    return [[int(x) for x in row.split(":")] for row in value.split(",")]


def json_rows_agg(
    session: AsyncSession, columns: Sequence[ColumnElement[Any]]
) -> ColumnElement[str]:
    """An aggregate of a group's rows as one JSON array of arrays (text); timestamps come
    as ISO text (PostgreSQL) or as stored (SQLite): read them with `to_utc(fromisoformat)`."""
    if backend_of(session) == "postgresql":
        return cast(func.json_agg(func.json_build_array(*columns)), String)
    return func.json_group_array(func.json_array(*columns), type_=String)


def in_ints(
    session: AsyncSession,
    column: ColumnElement[Any] | QueryableAttribute[Any],
    values: Sequence[int],
) -> ColumnElement[bool]:
    """`column IN values`: one array parameter on PostgreSQL, whatever the number of values
    (one cached plan, and no thousands of bind parameters to render and send)."""
    if backend_of(session) == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(BigInteger)))
    return column.in_(list(values))


def in_int_pairs(
    session: AsyncSession,
    first: ColumnElement[Any] | QueryableAttribute[Any],
    second: ColumnElement[Any] | QueryableAttribute[Any],
    name: str,
) -> ColumnElement[bool] | None:
    """`(first, second) IN pairs` as a join with two array parameters (PostgreSQL), bound
    at execution with `int_pairs_params(name, pairs)`: one statement whatever the pairs,
    whose generic plan probes the index once per pair. An OR of `first = a AND second =
    ANY(...)` per value of `first` got a generic plan with a parallel bitmap scan (workers
    started for 2 ms of work: 10 ms instead of 3). None on SQLite (the caller writes the
    OR)."""
    if backend_of(session) != "postgresql":
        return None
    values = (
        func.unnest(
            bindparam(f"{name}_a", type_=postgresql.ARRAY(BigInteger)),
            bindparam(f"{name}_b", type_=postgresql.ARRAY(BigInteger)),
        )
        .table_valued("a", "b")
        .render_derived()
    )
    return tuple_(first, second).in_(select(values.c.a, values.c.b))


def int_pairs_params(name: str, pairs: Sequence[tuple[int, int]]) -> dict[str, list[int]]:
    """The parameters of `in_int_pairs(..., name)` for these pairs."""
    return {f"{name}_a": [a for a, _ in pairs], f"{name}_b": [b for _, b in pairs]}


async def lock_tables_exclusive(session: AsyncSession, tables: Sequence[str]) -> None:
    """Block other writers of these tables until commit (PostgreSQL; SQLite has one writer)."""
    if backend_of(session) == "postgresql":
        names = ", ".join(f'"{t}"' for t in tables)
        await session.execute(text(f"LOCK TABLE {names} IN EXCLUSIVE MODE"))


def advisory_xact_lock_sql(session: AsyncSession, key: int) -> Any:
    """A statement that takes a lock held until the transaction ends (PostgreSQL), or None.

    SQLite needs none: `Database.write()` transactions are serialized already.
    """
    if backend_of(session) == "postgresql":
        return text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=key)
    return None


def try_advisory_xact_lock_sql(session: AsyncSession, key: int) -> Any:
    """A statement answering whether it took that lock without waiting (PostgreSQL), or
    None (SQLite: serialized already, so it always has it)."""
    if backend_of(session) == "postgresql":
        return text("SELECT pg_try_advisory_xact_lock(:key)").bindparams(key=key)
    return None


def _pg_array_type(column: Any) -> str:
    type_ = column.type
    if isinstance(type_, BigInteger):
        return "bigint[]"
    if isinstance(type_, Integer):  # SmallInteger and Integer both fit
        return "integer[]"
    if isinstance(type_, LargeBinary):
        return "bytea[]"
    return "text[]"


def _pg_unnest(
    table: Table, names: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> tuple[str, dict[str, list[Any]]]:
    """`unnest(...)` of one array parameter per column, and its parameters."""
    arrays = ", ".join(f"CAST(:p{i} AS {_pg_array_type(table.c[n])})" for i, n in enumerate(names))
    params = {f"p{i}": [r[i] for r in rows] for i in range(len(names))}
    return f"unnest({arrays})", params


def _quoted(names: Sequence[str], prefix: str = "") -> str:
    return ", ".join(f'{prefix}"{n}"' for n in names)


async def _pg_insert_arrays(
    session: AsyncSession,
    table: Table,
    keys: Sequence[str],
    names: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    on_conflict: str,
) -> None:
    """INSERT … SELECT * FROM unnest(arrays) ON CONFLICT (keys) `on_conflict`: one round
    trip and one plan whatever the number of rows, applied in the given order."""
    source, params = _pg_unnest(table, names, rows)
    sql = (
        f"INSERT INTO {table.name} ({_quoted(names)}) SELECT * FROM {source} "  # noqa: S608 - names come from the table
        f"ON CONFLICT ({_quoted(keys)}) {on_conflict}"
    )
    await session.execute(text(sql), params)


# SQLite's limit of bound parameters per statement is 32,766 (999 before 3.32).
_SQLITE_KEYS_PER_SELECT = 100


async def insert_missing(
    session: AsyncSession,
    table: Table,
    keys: Sequence[str],
    values: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Insert the rows (keys then values) whose key is not there yet; leave the others.

    PostgreSQL: one statement, rows inserted in the given order; an insert that meets a
    concurrent uncommitted insert of the same key waits for it and then skips the row.
    """
    if not rows:
        return
    names = [*keys, *values]
    if backend_of(session) == "postgresql":
        await _pg_insert_arrays(session, table, keys, names, rows, "DO NOTHING")
        return
    stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(keys))
    await session.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])


async def select_for_update_by_keys(
    session: AsyncSession,
    table: Table,
    keys: Sequence[str],
    values: Sequence[str],
    key_rows: Sequence[tuple[Any, ...]],
) -> list[tuple[Any, ...]]:
    """The rows (keys then values) with these keys, locked until commit.

    PostgreSQL: one statement that locks the rows in the order of `keys` (ORDER BY before
    FOR UPDATE), so that writers of overlapping sets lock them in the same order. SQLite
    needs no locks (one writer at a time).
    """
    if not key_rows:
        return []
    names = [*keys, *values]
    if backend_of(session) == "postgresql":
        source, params = _pg_unnest(table, keys, key_rows)
        sql = (
            f"SELECT {_quoted(names, 't.')} FROM {table.name} AS t "  # noqa: S608 - names come from the table
            f"WHERE ({_quoted(keys, 't.')}) IN (SELECT * FROM {source}) "
            f"ORDER BY {_quoted(keys, 't.')} FOR UPDATE"
        )
        return [tuple(r) for r in await session.execute(text(sql), params)]
    out: list[tuple[Any, ...]] = []
    columns = [table.c[n] for n in names]
    key_columns = tuple_(*(table.c[k] for k in keys))
    for i in range(0, len(key_rows), _SQLITE_KEYS_PER_SELECT):
        part = key_rows[i : i + _SQLITE_KEYS_PER_SELECT]
        stmt = select(*columns).where(key_columns.in_([tuple(k) for k in part]))
        out.extend(tuple(r) for r in await session.execute(stmt))
    return out


async def update_by_keys(
    session: AsyncSession,
    table: Table,
    keys: Sequence[str],
    values: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Set the values of existing rows (keys then values): one statement on PostgreSQL,
    a cached statement per row on SQLite."""
    if not rows:
        return
    names = [*keys, *values]
    if backend_of(session) == "postgresql":
        source, params = _pg_unnest(table, names, rows)
        sets = ", ".join(f'"{v}" = v."{v}"' for v in values)
        match = " AND ".join(f't."{k}" = v."{k}"' for k in keys)
        sql = (
            f"UPDATE {table.name} AS t SET {sets} "  # noqa: S608 - names come from the table
            f"FROM {source} AS v({_quoted(names)}) WHERE {match}"
        )
        await session.execute(text(sql), params)
        return
    stmt = (
        update(table)
        .where(*(table.c[k] == bindparam(f"k_{k}") for k in keys))
        .values({v: bindparam(f"v_{v}") for v in values})
    )
    params_list = [
        {**{f"k_{k}": r[i] for i, k in enumerate(keys)},
         **{f"v_{v}": r[len(keys) + i] for i, v in enumerate(values)}}
        for r in rows
    ]  # fmt: skip
    await session.execute(stmt, params_list)


async def upsert_add_many(
    session: AsyncSession,
    table: Table,
    keys: Sequence[str],
    values: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Insert rows (keys then values), or add their values to the rows already there.

    PostgreSQL: one statement over arrays (one round trip, one plan, whatever the number
    of rows); rows are applied in the given order, so callers sort them to lock shared
    rows in one order. SQLite: a cached statement run for each row.
    """
    if not rows:
        return
    names = [*keys, *values]
    if backend_of(session) == "postgresql":
        updates = ", ".join(f'"{v}" = {table.name}."{v}" + EXCLUDED."{v}"' for v in values)
        await _pg_insert_arrays(session, table, keys, names, rows, f"DO UPDATE SET {updates}")
        return
    stmt = sqlite.insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(keys), set_={v: table.c[v] + stmt.excluded[v] for v in values}
    )
    await session.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])


def bisect_sql(
    session: AsyncSession,
    value: ColumnElement[Any] | QueryableAttribute[Any],
    bounds: Sequence[int],
) -> ColumnElement[int] | None:
    """How many of the sorted `bounds` are <= value (`bisect_right`), in SQL on PostgreSQL;
    None on SQLite, where the caller maps the rows itself."""
    if backend_of(session) != "postgresql":
        return None
    array = bindparam(None, list(bounds), type_=postgresql.ARRAY(BigInteger))
    return func.width_bucket(value, array, type_=Integer)


def bisect_instants(
    session: AsyncSession,
    value: ColumnElement[Any] | QueryableAttribute[Any],
    instants: Sequence[datetime],
) -> ColumnElement[int] | None:
    """How many of the sorted aware `instants` are <= value (`bisect_right`), in SQL on
    PostgreSQL; None on SQLite."""
    if backend_of(session) != "postgresql":
        return None
    array = bindparam(None, list(instants), type_=postgresql.ARRAY(DateTime(timezone=True)))
    return func.width_bucket(value, array, type_=Integer)


async def prepare_large_sort(session: AsyncSession) -> None:
    """Let this transaction sort and group millions of rows in memory (PostgreSQL)."""
    if backend_of(session) == "postgresql":
        await session.execute(text("SET LOCAL work_mem = '256MB'"))


async def clear_tables(session: AsyncSession, tables: Sequence[Table]) -> None:
    """Delete every row: TRUNCATE on PostgreSQL (no dead rows left behind; it holds the
    tables exclusively until commit), DELETE on SQLite."""
    if backend_of(session) == "postgresql":
        names = ", ".join(f'"{t.name}"' for t in tables)
        await session.execute(text(f"TRUNCATE {names}"))
        return
    for table in tables:
        await session.execute(table.delete())


async def drop_primary_key(session: AsyncSession, table: Table) -> bool:
    """Drop the table's primary key before a bulk insert (PostgreSQL); whether it did.

    Building the index once over millions of sorted rows is about five times cheaper than
    growing it row by row. The ALTER holds the table exclusively (readers too) until the
    transaction ends. SQLite cannot drop a primary key in place, and needs no speed-up
    for the data it holds here.
    """
    if backend_of(session) != "postgresql":
        return False
    await session.execute(text(f'ALTER TABLE "{table.name}" DROP CONSTRAINT "pk_{table.name}"'))
    return True


async def add_primary_key(session: AsyncSession, table: Table) -> None:
    """Put back the primary key that `drop_primary_key` dropped (same name and columns)."""
    columns = ", ".join(f'"{c.name}"' for c in table.primary_key.columns)
    await session.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
    await session.execute(
        text(f'ALTER TABLE "{table.name}" ADD CONSTRAINT "pk_{table.name}" PRIMARY KEY ({columns})')
    )


async def analyze_tables(session: AsyncSession, tables: Sequence[str]) -> None:
    """Refresh planner statistics after a bulk change (PostgreSQL; SQLite plans without)."""
    if backend_of(session) == "postgresql":
        for name in tables:
            await session.execute(text(f'ANALYZE "{name}"'))
