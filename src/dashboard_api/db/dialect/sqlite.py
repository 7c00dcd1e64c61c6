"""SQLite (aiosqlite): one file, one process, one writer at a time; timestamps as text."""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    LargeBinary,
    Select,
    String,
    Table,
    TextClause,
    and_,
    bindparam,
    cast,
    event,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Row, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BooleanClauseList, False_, Grouping

from dashboard_api.db.dialect.base import (
    Column,
    DatabaseFault,
    Dialect,
    ExportFormat,
    LineField,
    OutputAppend,
)
from dashboard_api.db.dialect.locks import NamedLocks, ProcessLocks
from dashboard_api.db.dialect.sqlite_connection import (
    DEFAULT_CACHE_MB,
    DEFAULT_MMAP_MB,
    begin_hook,
    connect_hook,
)
from dashboard_api.db.dialect.values import escape_like
from dashboard_api.task_statuses import TERMINAL_STATUSES

# SQLite's limit of bound parameters per statement is 32,766 (999 before 3.32).
_KEYS_PER_SELECT = 100
_LOG_BIN = "dashboard_log_bin"
# A bulk load's page cache (KiB), and where `prepare_bulk_load` keeps the one it replaced.
_BULK_CACHE_KIB = 256 * 1024
_BULK_CACHE = "dashboard_bulk_cache_size"


def _stored_micros(column: Any) -> ColumnElement[int]:
    # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff': whole seconds, then the six digits.
    whole = cast(func.strftime("%s", func.substr(column, 1, 19)), Integer) * 1_000_000
    return whole + cast(func.substr(column, 21, 6), Integer)


# SQLite result codes (sqlite3.h) of a file that cannot take the work now: SQLITE_IOERR
# (10), SQLITE_FULL (13, the disk), SQLITE_CANTOPEN (14), SQLITE_READONLY (8).
_UNAVAILABLE_RESULT_CODES = frozenset({8, 10, 13, 14})
# SQLITE_BUSY (5) and SQLITE_LOCKED (6): another connection held the lock past the timeout.
_CONTENTION_RESULT_CODES = frozenset({5, 6})


def _or_terms(clause: ColumnElement[bool]) -> list[ColumnElement[bool]]:
    """`clause` as the terms of an OR none of which holds an OR: an AND over an OR
    (`grain = g AND (bucket range OR bucket IN ...)`) is distributed."""
    while isinstance(clause, Grouping):
        clause = clause.element  # type: ignore[assignment]
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.or_:
        return [t for c in clause.clauses for t in _or_terms(c)]
    if isinstance(clause, BooleanClauseList) and clause.operator is operators.and_:
        parts = list(clause.clauses)
        for i, part in enumerate(parts):
            inner = _or_terms(part)
            if len(inner) > 1:
                rest = [*parts[:i], *parts[i + 1 :]]
                return [t for alt in inner for t in _or_terms(and_(*rest, alt))]
    return [clause]


class SQLiteDialect(Dialect):
    backend = "sqlite"

    # --- the engine and its sessions ------------------------------------------------------

    def engine_options(self, *, pool_size: int, command_timeout: float | None) -> dict[str, Any]:
        return {"connect_args": {"timeout": 30}}

    def classify_error(self, driver_error: BaseException | None) -> DatabaseFault | None:
        code = getattr(driver_error, "sqlite_errorcode", None)
        if code is None:
            return None
        primary = code & 0xFF  # extended result codes keep the primary one in the low byte
        if primary in _UNAVAILABLE_RESULT_CODES:
            return DatabaseFault.UNAVAILABLE
        if primary in _CONTENTION_RESULT_CODES:
            return DatabaseFault.CONTENTION
        return None

    def install(
        self, engine: AsyncEngine, *, cache_mb: int | None = None, mmap_mb: int | None = None
    ) -> None:
        hook = connect_hook(
            DEFAULT_CACHE_MB if cache_mb is None else cache_mb,
            DEFAULT_MMAP_MB if mmap_mb is None else mmap_mb,
        )
        event.listen(engine.sync_engine, "connect", hook)
        event.listen(engine.sync_engine, "begin", begin_hook)

    @property
    def serializes_writers(self) -> bool:
        return True

    @property
    def writes_alone(self) -> bool:
        return False  # every write takes the process's write lock in `Database.write`

    @property
    def reads_in_autocommit(self) -> bool:
        return False

    def database_file(self, url: str) -> str | None:
        path = make_url(url).database
        if not path or path == ":memory:" or path.startswith("file::memory:"):
            return None
        return path

    def check_server_version(self, version: tuple[int | str, ...] | None) -> None:
        return  # embedded: the driver's library is the server

    def bind_timestamp(self, value: datetime) -> datetime:
        # Naive UTC text in one fixed format, so that text order is time order and range
        # filters work on indexes.
        return value.replace(tzinfo=None)

    def reads_utc_timestamps(self, driver: str) -> bool:
        return False  # naive UTC text

    def exclusive_locks(
        self, url: str, *, owner: object, timeout: float, key: Callable[[str], int], what: str
    ) -> NamedLocks:
        path = self.database_file(url)
        # An in-memory database is its owner's alone.
        scope = os.path.realpath(path) if path else f"memory:{id(owner)}"
        return ProcessLocks(scope, what=what)

    # --- statements and clauses -------------------------------------------------------------

    def insert(self, table: Table) -> Any:
        return sqlite.insert(table)

    # No row locks: writers are serialized (Database.write), which gives the same guarantee.

    def lock_for_update(self, stmt: Select[Any]) -> Select[Any]:
        return stmt

    def lock_skip_locked(self, stmt: Select[Any]) -> Select[Any]:
        return stmt

    @property
    def reuses_cte_results(self) -> bool:
        return False

    @property
    def indexes_substrings(self) -> bool:
        return False

    @property
    def binds_arrays(self) -> bool:
        return False

    def contains_ci(
        self, column: Column, needle: str, *, indexed: bool = True
    ) -> ColumnElement[bool]:
        # SQLite's LIKE folds ASCII letters only; the registered casefold function covers
        # all of Unicode but is a Python call per row (2.7x the LIKE: 107-119 ms against
        # 37-44 over 200,000 seeded tasks). A row LIKE matches with the casefolded pattern
        # matches (its ASCII letters fold alike either way, the rest equals the pattern's,
        # and casefolding is idempotent); a row it misses can match only through a
        # character outside ASCII, so only rows holding one (more bytes than characters)
        # pay the call.
        folded = literal(f"%{escape_like(needle)}%".casefold())
        return or_(
            column.like(folded, escape="\\"),
            and_(
                func.length(column) < func.length(cast(column, LargeBinary)),
                func.dashboard_casefold(column).like(folded, escape="\\"),
            ),
        )

    # --- time ---------------------------------------------------------------------------------

    def epoch_seconds_to_ts(self, seconds: Column) -> ColumnElement[Any]:
        return func.datetime(seconds, "unixepoch")

    def epoch_bucket(self, column: Column, seconds: int) -> ColumnElement[int]:
        # strftime would round the stored fraction (to ms), so it reads only whole seconds.
        whole = cast(func.strftime("%s", func.substr(column, 1, 19)), Integer)
        return whole - (whole % seconds + seconds) % seconds

    def hour_bin(self, column: Column) -> ColumnElement[Any]:
        return func.substr(column, 1, 13)  # 'YYYY-MM-DD HH': no strftime per row

    def hour_bin_seconds(self, value: ColumnElement[Any]) -> ColumnElement[int]:
        return cast(func.strftime("%s", value + literal(":00:00", String)), Integer)

    def micros_between(self, later: Column, earlier: Column) -> ColumnElement[int]:
        return _stored_micros(later) - _stored_micros(earlier)

    # --- analytics ------------------------------------------------------------------------------

    async def prepare_log_bin(self, session: AsyncSession, thresholds: Sequence[int]) -> None:
        def log_bin_fn(value: int | None) -> int | None:
            return None if value is None else bisect.bisect_right(thresholds, value)

        conn = await session.connection()
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.create_function(_LOG_BIN, 1, log_bin_fn, deterministic=True)

    def log_bin(self, value: Column, thresholds: Sequence[int]) -> ColumnElement[int]:
        fn: ColumnElement[int] = getattr(func, _LOG_BIN)(value, type_=Integer)
        return fn

    def int_list_agg(self, column: Column) -> ColumnElement[Any]:
        return func.json_group_array(column)

    def bytes_list_agg(self, column: Column) -> ColumnElement[Any]:
        # JSON holds no bytes: each as hex text.
        return func.json_group_array(func.hex(column))

    def int_rows_agg(self, columns: Sequence[ColumnElement[Any]]) -> ColumnElement[str]:
        row: ColumnElement[Any] = cast(columns[0], String)
        for column in columns[1:]:
            row = row + literal(":", String) + cast(column, String)
        return func.group_concat(row, literal(",", String), type_=String)

    def json_rows_agg(self, columns: Sequence[ColumnElement[Any]]) -> ColumnElement[str]:
        return func.json_group_array(func.json_array(*columns), type_=String)

    def export_line(
        self, fields: Sequence[LineField], fmt: ExportFormat
    ) -> ColumnElement[str] | None:
        # The Python writers: SQLite's functions cannot write Python's float text.
        return None

    def joined_text(
        self, value: ColumnElement[str], order: ColumnElement[Any]
    ) -> ColumnElement[str]:
        # group_concat takes an ORDER BY from SQLite 3.44 on only; SQLite's export lines
        # are written in Python (export_line is None), so nothing asks.
        raise NotImplementedError("SQLite writes no export lines")

    def json_object(self, fields: Sequence[LineField]) -> ColumnElement[str] | None:
        return None  # as export_line

    def in_ints(self, column: Column, values: Sequence[int]) -> ColumnElement[bool]:
        return column.in_(list(values))

    def in_bound_ints(self, column: Column, name: str) -> ColumnElement[bool]:
        return column.in_(bindparam(name, expanding=True))

    def in_strings(self, column: Column, name: str) -> ColumnElement[bool]:
        return column.in_(bindparam(name, expanding=True))

    def in_int_pairs(self, first: Column, second: Column, name: str) -> ColumnElement[bool]:
        raise NotImplementedError("SQLite binds no arrays: write the pairs into the statement")

    def rows_table(
        self, name: str, columns: Sequence[tuple[str, Any]], rows: Sequence[tuple[Any, ...]]
    ) -> tuple[Any, dict[str, Any]]:
        assert rows, "an empty table of values"
        selects = [
            select(*(literal(v, t).label(c) for v, (c, t) in zip(row, columns, strict=True)))
            for row in rows
        ]
        return union_all(*selects).subquery(name), {}

    @property
    def joins_ranges_laterally(self) -> bool:
        return False

    def keyed_or(
        self, key: Sequence[ColumnElement[bool]], alternatives: Sequence[ColumnElement[bool]]
    ) -> ColumnElement[bool]:
        # SQLite seeks an index for an OR only when each of its terms can seek it alone:
        # with the series beside the OR of blocks it read every row of the series (each
        # block of every grain: 250 ms at 100,000 tasks, growing with the data). Written
        # as an OR of (key AND one grain's buckets) terms, it seeks each (MULTI-INDEX OR).
        # A false term (`or_(false(), *blocks)`: no blocks) adds no row but, being no
        # seek, would make SQLite read the whole table.
        terms = [t for a in alternatives for t in _or_terms(a) if not isinstance(t, False_)]
        if not terms:
            return super().keyed_or(key, alternatives)
        return or_(*(and_(*key, term) for term in terms))

    def bisect_bound(self, value: Any, name: str, *, instants: bool = False) -> ColumnElement[int]:
        raise NotImplementedError("SQLite binds no arrays: map the rows in Python")

    # --- locks: writers are serialized already ---------------------------------------------------

    async def lock_tables_exclusive(self, session: AsyncSession, tables: Sequence[str]) -> None:
        return

    def advisory_xact_lock_sql(self, key: int) -> TextClause | None:
        return None

    def try_advisory_xact_lock_sql(self, key: int) -> TextClause | None:
        return None

    async def lock_keys(self, session: AsyncSession, space: int, keys: Sequence[int]) -> None:
        return

    # --- writes of many rows by key: a cached statement run for each row -------------------------

    async def insert_missing(
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        values: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        if not rows:
            return
        names = [*keys, *values]
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(keys))
        await session.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])

    async def insert_missing_returning(
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        rows: Sequence[dict[str, Any]],
        constants: dict[str, Any],
    ) -> list[tuple[Any, ...]]:
        if not rows:
            return []
        stmt = (
            sqlite.insert(table)
            .on_conflict_do_nothing(index_elements=[table.c[k] for k in keys])
            .returning(*(table.c[k] for k in keys))
        )
        params = [{**row, **constants} for row in rows]
        return [tuple(r) for r in await session.execute(stmt, params)]

    async def insert_rows(
        self,
        session: AsyncSession,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        constants: dict[str, Any] | None = None,
    ) -> None:
        if rows:
            names, shared = list(columns), constants or {}
            params = [{**dict(zip(names, r, strict=True)), **shared} for r in rows]
            await session.execute(insert(table), params)

    async def select_for_update_by_keys(
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        values: Sequence[str],
        key_rows: Sequence[tuple[Any, ...]],
    ) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        columns = [table.c[n] for n in [*keys, *values]]
        key_columns = tuple_(*(table.c[k] for k in keys))
        for i in range(0, len(key_rows), _KEYS_PER_SELECT):
            part = key_rows[i : i + _KEYS_PER_SELECT]
            stmt = select(*columns).where(key_columns.in_([tuple(k) for k in part]))
            out.extend(tuple(r) for r in await session.execute(stmt))
        return out

    async def update_by_keys(
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        values: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        if not rows:
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
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        values: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        if not rows:
            return
        names = [*keys, *values]
        stmt = sqlite.insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={v: table.c[v] + stmt.excluded[v] for v in values}
        )
        await session.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])

    # --- task output ------------------------------------------------------------------------------

    async def append_output(self, session: AsyncSession, append: OutputAppend) -> Row[Any] | None:
        tasks, n = append.tasks, len(append.chunks)
        moved = (
            update(tasks)
            .where(
                tasks.c.task_id == append.task_id,
                tasks.c.status.not_in(TERMINAL_STATUSES),
                tasks.c.output_truncated.is_(False),
                tasks.c.first_output_at.is_not(None),
                tasks.c.output_bytes + append.size <= append.cap_bytes,
            )
            .values(
                output_seq=tasks.c.output_seq + n,
                output_bytes=tasks.c.output_bytes + append.size,
                updated_at=append.now,
            )
            .returning(*append.returning, tasks.c.lease_expires_at, tasks.c.lease_seconds)
        )
        row = (await session.execute(moved)).first()
        if row is None:
            return None
        # The renewal cannot be computed in the statement (timestamps are text); a second
        # one renews, once per half lease (writers are serialized).
        renewed = append.renewal(row)
        if renewed is not None:
            await session.execute(
                update(tasks)
                .where(tasks.c.task_id == append.task_id)
                .values(lease_expires_at=renewed)
            )
        base = row.output_seq - n
        # Rows as execution parameters: a multi-row `.values(rows)` has no cache key and
        # would be compiled on every append.
        rows = [
            {
                "task_id": append.task_id,
                "seq": base + i,
                "stream": stream,
                "content": content,
                "created_at": append.now,
            }
            for i, (stream, content) in enumerate(append.chunks, start=1)
        ]
        await session.execute(insert(append.chunks_table), rows)
        return row

    async def append_alone(self, conn: AsyncConnection, append: OutputAppend) -> int | None:
        raise NotImplementedError("SQLite writes go through Database.write (writes_alone)")

    # --- maintenance and bulk loads ---------------------------------------------------------------

    async def prepare_large_sort(self, session: AsyncSession) -> None:
        return

    async def clear_tables(self, session: AsyncSession, tables: Sequence[Table]) -> None:
        for table in tables:
            await session.execute(table.delete())

    async def drop_primary_key(self, session: AsyncSession, table: Table) -> bool:
        return False  # SQLite cannot drop a primary key in place

    async def add_primary_key(self, session: AsyncSession, table: Table) -> None:
        raise NotImplementedError("SQLite keeps its primary keys (drop_primary_key)")

    async def analyze_tables(self, session: AsyncSession, tables: Sequence[str]) -> None:
        return  # SQLite plans without statistics here

    async def prepare_bulk_load(self, session: AsyncSession) -> None:
        # The default cache (2 MB) holds a sliver of the B-trees a load writes: pages
        # went to the file and were read back many times (and each CREATE INDEX sorts in
        # that much memory before it spills to temporary files). Only this connection's,
        # put back by `finish_bulk_load`; memory is taken as pages are used.
        conn = await session.connection()
        previous = (await conn.exec_driver_sql("PRAGMA cache_size")).scalar_one()
        session.info[_BULK_CACHE] = previous
        await conn.exec_driver_sql(f"PRAGMA cache_size = -{_BULK_CACHE_KIB}")

    async def finish_bulk_load(self, session: AsyncSession) -> None:
        previous = session.info.pop(_BULK_CACHE, None)
        if previous is None:
            return
        # Also after a failed load: a connection that cannot take the pragma now is
        # discarded by the pool, and the load's own error is the one to report.
        with contextlib.suppress(SQLAlchemyError):
            conn = await session.connection()
            await conn.exec_driver_sql(f"PRAGMA cache_size = {int(previous)}")

    async def drop_secondary_indexes(
        self, session: AsyncSession, tables: Sequence[str]
    ) -> list[str]:
        # As on PostgreSQL: one sorted build per index after the load instead of growing
        # 13 indexes row by row (measured on 100,000 tasks: see bench/README.md, `seed`).
        # DDL is transactional in SQLite: a load that fails leaves the indexes in place.
        # Indexes without SQL back a PRIMARY KEY or UNIQUE constraint; unique indexes
        # are constraints too: both stay.
        conn = await session.connection()
        marks = ", ".join("?" for _ in tables)
        result = await conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "  # noqa: S608
            f"AND tbl_name IN ({marks}) AND sql IS NOT NULL "
            "AND upper(sql) NOT LIKE 'CREATE UNIQUE %' ORDER BY name",
            tuple(tables),
        )
        found: Any = result.all()
        rows: list[tuple[str, str]] = [(name, sql) for name, sql in found]
        for name, _ in rows:
            await conn.exec_driver_sql(f'DROP INDEX "{name}"')
        return [definition for _, definition in rows]

    async def rebuild_indexes(self, session: AsyncSession, definitions: Sequence[str]) -> None:
        conn = await session.connection()
        for definition in definitions:
            await conn.exec_driver_sql(definition)

    @property
    def copies_binary(self) -> bool:
        return False

    async def bulk_insert(
        self,
        session: AsyncSession,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        if not rows:
            return
        dicts = [dict(zip(columns, row, strict=True)) for row in rows]
        await session.execute(table.insert(), dicts)

    async def insert_driver_rows(
        self, session: AsyncSession, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
    ) -> None:
        # The driver's executemany: no dict per row, no bind processor per value (the
        # seed spent most of its CPU there).
        if not rows:
            return
        names = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" for _ in columns)
        conn = await session.connection()
        await conn.exec_driver_sql(
            f'INSERT INTO "{table}" ({names}) VALUES ({marks})',  # noqa: S608 - our names
            rows,
        )
