"""PostgreSQL (asyncpg): row locks, trigram searches, arrays as parameters, COPY."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    Select,
    String,
    Table,
    TextClause,
    any_,
    bindparam,
    cast,
    event,
    func,
    literal,
    literal_column,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from dashboard_api.db.dialect.base import (
    Column,
    DatabaseFault,
    Dialect,
    ExportFormat,
    LineField,
    OutputAppend,
)
from dashboard_api.db.dialect.locks import AdvisoryLocks, NamedLocks
from dashboard_api.db.dialect.pg_appends import append_statement
from dashboard_api.db.dialect.pg_arrays import (
    column_arrays,
    insert_rows_sql,
    quoted,
    unnest_arrays,
    unnest_insert,
)
from dashboard_api.db.dialect.pg_insert_with import insert_with_rows
from dashboard_api.db.dialect.pg_lines import export_line, json_object
from dashboard_api.db.dialect.pg_pool import (
    GENERIC_PLAN_SETTINGS,
    SERVICE_SETTINGS,
    note_checkin,
    ping_if_idle,
)
from dashboard_api.db.dialect.values import escape_like

# date_bin (the per-hour q counts, services/tasks/search.py) arrived in PostgreSQL 14.
MIN_POSTGRESQL = 14


@functools.lru_cache(maxsize=8)
def _int_array_literal(values: tuple[int, ...]) -> ColumnElement[Any]:
    """A constant bigint[] written into the statement: prepared once per connection, it is
    not sent again with every execution (1,070 thresholds are 9 KB of Bind message)."""
    return literal_column("'{" + ",".join(str(int(v)) for v in values) + "}'::bigint[]")


# SQLSTATE classes of a server that cannot take the work now, whatever the request:
# connection exceptions (08), insufficient resources (53: too many connections, out of
# memory or disk) and a server starting or shutting down (57P0x). The driver reports
# some of them, such as "too many clients already" at connect, as a plain DBAPIError.
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P0")
# Transactions aborted to resolve contention: serialization failure, deadlock, lock not
# available (a NOWAIT or lock_timeout).
_CONTENTION_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
# Text PostgreSQL cannot store or encode (NUL bytes, untranslatable characters).
_UNSTORABLE_TEXT_SQLSTATES = frozenset({"22021", "22P05"})


class PostgreSQLDialect(Dialect):
    backend = "postgresql"

    # --- the engine and its sessions ------------------------------------------------------

    def engine_options(self, *, pool_size: int, command_timeout: float | None) -> dict[str, Any]:
        return {
            # Up to twice `pool_size` connections, every one kept once opened. An overflow
            # connection is closed at checkin: with the overflow as large as the pool, 32
            # concurrent list requests opened a new session (a backend process,
            # authentication, an empty statement cache) for one request in eight.
            "pool_size": 2 * pool_size,
            "max_overflow": 0,
            # Checked on checkout by ping_if_idle instead (a ping is three round trips).
            "pool_pre_ping": False,
            "pool_timeout": 10,
            # None for maintenance commands (bulk loads, rebuilds) that run for minutes.
            "connect_args": {
                "timeout": 5,
                "command_timeout": command_timeout,
                "server_settings": SERVICE_SETTINGS if command_timeout else {},
            },
        }

    def generic_plan_engine_options(
        self, *, pool_size: int, command_timeout: float | None
    ) -> dict[str, Any] | None:
        options = self.engine_options(pool_size=pool_size, command_timeout=command_timeout)
        connect_args = options["connect_args"]
        # Half the main pool's size: opened on demand like it, so a replica holds as many
        # of these as it ever ran analytics reads at once.
        options["pool_size"] = pool_size
        options["connect_args"] = {
            **connect_args,
            "server_settings": {**connect_args["server_settings"], **GENERIC_PLAN_SETTINGS},
        }
        return options

    def classify_error(self, driver_error: BaseException | None) -> DatabaseFault | None:
        sqlstate = str(getattr(driver_error, "sqlstate", None) or "")
        if sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES):
            return DatabaseFault.UNAVAILABLE
        if sqlstate in _CONTENTION_SQLSTATES:
            return DatabaseFault.CONTENTION
        if sqlstate in _UNSTORABLE_TEXT_SQLSTATES:
            return DatabaseFault.UNSTORABLE_TEXT
        return None

    def install(
        self, engine: AsyncEngine, *, cache_mb: int | None = None, mmap_mb: int | None = None
    ) -> None:
        pool = engine.sync_engine.pool
        event.listen(pool, "connect", note_checkin)
        event.listen(pool, "checkin", note_checkin)
        event.listen(pool, "checkout", ping_if_idle)

    @property
    def serializes_writers(self) -> bool:
        return False

    @property
    def writes_alone(self) -> bool:
        return True

    @property
    def reads_in_autocommit(self) -> bool:
        return True

    def database_file(self, url: str) -> str | None:
        return None

    def check_server_version(self, version: tuple[int | str, ...] | None) -> None:
        if not version or not isinstance(version[0], int):
            return
        if version[0] < MIN_POSTGRESQL:
            found = ".".join(map(str, version))
            raise RuntimeError(
                f"PostgreSQL {MIN_POSTGRESQL} or later is required; the server is {found}."
            )

    def bind_timestamp(self, value: datetime) -> datetime:
        return value  # timestamptz

    def reads_utc_timestamps(self, driver: str) -> bool:
        # asyncpg decodes timestamptz (binary: microseconds since 2000 UTC) with
        # tzinfo=datetime.timezone.utc, whatever the session's TimeZone; +-infinity as
        # the naive datetime.max and .min.
        return driver == "asyncpg"

    def exclusive_locks(
        self, url: str, *, owner: object, timeout: float, key: Callable[[str], int], what: str
    ) -> NamedLocks:
        return AdvisoryLocks(url, timeout=timeout, key=key, what=what)

    # --- statements and clauses -------------------------------------------------------------

    def insert(self, table: Table) -> Any:
        return postgresql.insert(table)

    def lock_for_update(self, stmt: Select[Any]) -> Select[Any]:
        return stmt.with_for_update()

    def lock_skip_locked(self, stmt: Select[Any]) -> Select[Any]:
        return stmt.with_for_update(skip_locked=True)

    @property
    def reuses_cte_results(self) -> bool:
        return True

    @property
    def indexes_substrings(self) -> bool:
        return True

    @property
    def binds_arrays(self) -> bool:
        return True

    def contains_ci(
        self, column: Column, needle: str, *, indexed: bool = True
    ) -> ColumnElement[bool]:
        pattern = f"%{escape_like(needle)}%"
        if not indexed:
            column = column + literal_column("''")
        # The pattern goes into the statement's text (quoted by SQLAlchemy), not a bind
        # parameter: after five runs of a prepared statement PostgreSQL may switch to a
        # generic plan, which cannot know how rare the substring is and plans the trigram
        # search badly (2x slower for a common one in the benchmark). Other parameters
        # keep the compiled form cached.
        return column.ilike(literal(pattern, String, literal_execute=True), escape="\\")

    # --- time ---------------------------------------------------------------------------------

    def epoch_seconds_to_ts(self, seconds: Column) -> ColumnElement[Any]:
        return func.to_timestamp(seconds)

    def epoch_bucket(self, column: Column, seconds: int) -> ColumnElement[int]:
        epoch = func.extract("epoch", column)
        return cast(func.floor(epoch / seconds), BigInteger) * seconds

    def hour_bin(self, column: Column) -> ColumnElement[Any]:
        # `epoch_bucket` computes in numeric (extract returns numeric): 0.3-0.5 µs a row,
        # 40-70 ms of grouping 145,000 matches per hour, against 13-23 ms for date_bin's
        # integer arithmetic on the timestamp. The origin precedes every storable instant
        # (no bin before it to round) and is a whole number of hours from the epoch.
        return func.date_bin(
            literal_column("interval '1 hour'"),
            column,
            literal_column("timestamptz '0001-01-01 00:00:00+00'"),
        )

    def hour_bin_seconds(self, value: ColumnElement[Any]) -> ColumnElement[int]:
        return cast(func.extract("epoch", value), BigInteger)

    def micros_between(self, later: Column, earlier: Column) -> ColumnElement[int]:
        return cast(func.extract("epoch", later - earlier) * 1_000_000, BigInteger)

    # --- analytics ------------------------------------------------------------------------------

    async def prepare_log_bin(self, session: AsyncSession, thresholds: Sequence[int]) -> None:
        return  # width_bucket is built in

    def log_bin(self, value: Column, thresholds: Sequence[int]) -> ColumnElement[int]:
        return func.width_bucket(value, _int_array_literal(tuple(thresholds)), type_=Integer)

    def int_list_agg(self, column: Column) -> ColumnElement[Any]:
        return func.array_agg(column)

    def bytes_list_agg(self, column: Column) -> ColumnElement[Any]:
        return func.array_agg(column)

    def int_rows_agg(self, columns: Sequence[ColumnElement[Any]]) -> ColumnElement[str]:
        row: ColumnElement[Any] = cast(columns[0], String)
        for column in columns[1:]:
            row = row + literal(":", String) + cast(column, String)
        return func.string_agg(row, literal(",", String), type_=String)

    def json_rows_agg(self, columns: Sequence[ColumnElement[Any]]) -> ColumnElement[str]:
        return cast(func.json_agg(func.json_build_array(*columns)), String)

    def export_line(
        self, fields: Sequence[LineField], fmt: ExportFormat
    ) -> ColumnElement[str] | None:
        return export_line(fields, fmt)

    def joined_text(
        self, value: ColumnElement[str], order: ColumnElement[Any]
    ) -> ColumnElement[str]:
        return func.string_agg(
            value, postgresql.aggregate_order_by(literal_column("''", String), order), type_=String
        )

    def json_object(self, fields: Sequence[LineField]) -> ColumnElement[str] | None:
        return json_object(fields)

    def in_ints(self, column: Column, values: Sequence[int]) -> ColumnElement[bool]:
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(BigInteger)))

    def in_bound_ints(self, column: Column, name: str) -> ColumnElement[bool]:
        return column == any_(bindparam(name, type_=postgresql.ARRAY(BigInteger)))

    def in_strings(self, column: Column, name: str) -> ColumnElement[bool]:
        return column == any_(bindparam(name, type_=postgresql.ARRAY(String)))

    def in_int_pairs(self, first: Column, second: Column, name: str) -> ColumnElement[bool]:
        # A join with two array parameters, whose generic plan probes the index once per
        # pair. An OR of `first = a AND second = ANY(...)` per value of `first` got a
        # generic plan with a parallel bitmap scan (workers started for 2 ms of work: 10 ms
        # instead of 3).
        values = (
            func.unnest(
                bindparam(f"{name}_a", type_=postgresql.ARRAY(BigInteger)),
                bindparam(f"{name}_b", type_=postgresql.ARRAY(BigInteger)),
            )
            .table_valued("a", "b")
            .render_derived()
        )
        return tuple_(first, second).in_(select(values.c.a, values.c.b))

    def rows_table(
        self, name: str, columns: Sequence[tuple[str, Any]], rows: Sequence[tuple[Any, ...]]
    ) -> tuple[Any, dict[str, Any]]:
        arrays = [
            bindparam(f"{name}_{column}", type_=postgresql.ARRAY(_element_type(type_)))
            for column, type_ in columns
        ]
        table = func.unnest(*arrays).table_valued(*(c for c, _ in columns)).render_derived()
        params = {f"{name}_{c}": [r[i] for r in rows] for i, (c, _) in enumerate(columns)}
        return table.alias(name), params

    @property
    def joins_ranges_laterally(self) -> bool:
        return True

    def bisect_bound(self, value: Any, name: str, *, instants: bool = False) -> ColumnElement[int]:
        element = DateTime(timezone=True) if instants else BigInteger
        array = bindparam(name, type_=postgresql.ARRAY(element))
        return func.width_bucket(value, array, type_=Integer)

    # --- locks ----------------------------------------------------------------------------------

    async def lock_tables_exclusive(self, session: AsyncSession, tables: Sequence[str]) -> None:
        names = ", ".join(f'"{t}"' for t in tables)
        await session.execute(text(f"LOCK TABLE {names} IN EXCLUSIVE MODE"))

    def advisory_xact_lock_sql(self, key: int) -> TextClause | None:
        return text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=key)

    def try_advisory_xact_lock_sql(self, key: int) -> TextClause | None:
        return text("SELECT pg_try_advisory_xact_lock(:key)").bindparams(key=key)

    async def lock_keys(self, session: AsyncSession, space: int, keys: Sequence[int]) -> None:
        await session.execute(_LOCK_KEYS, {"space": space, "keys": sorted(set(keys))})

    # --- writes of many rows by key ---------------------------------------------------------------
    # One statement over one array parameter per column: one round trip and one plan
    # whatever the number of rows, applied in the given order.

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
        sql, params = unnest_insert(table, keys, [*keys, *values], rows, "DO NOTHING")
        await session.execute(text(sql), params)

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
        names = tuple(rows[0])
        stmt = insert_rows_sql(table, names, tuple(constants), tuple(keys))
        params: dict[str, Any] = column_arrays(table, names, rows)
        params.update({f"c{i}": v for i, v in enumerate(constants.values())})
        return [tuple(r) for r in await session.execute(stmt, params)]

    async def insert_rows(
        self,
        session: AsyncSession,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        constants: dict[str, Any] | None = None,
    ) -> None:
        if not rows:
            return
        names, shared = tuple(columns), constants or {}
        params = column_arrays(table, names, rows)
        params.update({f"c{i}": v for i, v in enumerate(shared.values())})
        await session.execute(insert_rows_sql(table, names, tuple(shared)), params)

    async def select_for_update_by_keys(
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        values: Sequence[str],
        key_rows: Sequence[tuple[Any, ...]],
    ) -> list[tuple[Any, ...]]:
        if not key_rows:
            return []
        names = [*keys, *values]
        # ORDER BY before FOR UPDATE: the rows are locked in key order.
        source, params = unnest_arrays(table, keys, key_rows)
        sql = (
            f"SELECT {quoted(names, 't.')} FROM {table.name} AS t "  # noqa: S608 - names come from the table
            f"WHERE ({quoted(keys, 't.')}) IN (SELECT * FROM {source}) "
            f"ORDER BY {quoted(keys, 't.')} FOR UPDATE"
        )
        return [tuple(r) for r in await session.execute(text(sql), params)]

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
        names = [*keys, *values]
        source, params = unnest_arrays(table, names, rows)
        sets = ", ".join(f'"{v}" = v."{v}"' for v in values)
        match = " AND ".join(f't."{k}" = v."{k}"' for k in keys)
        sql = (
            f"UPDATE {table.name} AS t SET {sets} "  # noqa: S608 - names come from the table
            f"FROM {source} AS v({quoted(names)}) WHERE {match}"
        )
        await session.execute(text(sql), params)

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
        updates = ", ".join(f'"{v}" = {table.name}."{v}" + EXCLUDED."{v}"' for v in values)
        sql, params = unnest_insert(table, keys, [*keys, *values], rows, f"DO UPDATE SET {updates}")
        await session.execute(text(sql), params)

    # One statement (data-modifying CTEs): one round trip, not one per row.
    insert_with_rows = insert_with_rows

    # --- task output ------------------------------------------------------------------------------

    async def append_output(self, session: AsyncSession, append: OutputAppend) -> Row[Any] | None:
        stmt = append_statement(
            append.tasks, append.chunks_table, append.returning, append.unless_member_of
        )
        return (await session.execute(stmt, _append_params(append))).first()

    async def append_alone(self, conn: AsyncConnection, append: OutputAppend) -> int | None:
        stmt = append_statement(
            append.tasks, append.chunks_table, append.returning, append.unless_member_of
        )
        seq: int | None = (await conn.execute(stmt, _append_params(append))).scalar()
        return seq

    # --- maintenance and bulk loads -----------------------------------------------------------

    async def prepare_large_sort(self, session: AsyncSession) -> None:
        await session.execute(text("SET LOCAL work_mem = '256MB'"))

    async def clear_tables(self, session: AsyncSession, tables: Sequence[Table]) -> None:
        # TRUNCATE: no dead rows left behind (it holds the tables exclusively until commit).
        names = ", ".join(f'"{t.name}"' for t in tables)
        await session.execute(text(f"TRUNCATE {names}"))

    async def drop_primary_key(self, session: AsyncSession, table: Table) -> bool:
        # The ALTER holds the table exclusively (readers too) until the transaction ends.
        await session.execute(text(f'ALTER TABLE "{table.name}" DROP CONSTRAINT "pk_{table.name}"'))
        return True

    async def add_primary_key(self, session: AsyncSession, table: Table) -> None:
        columns = ", ".join(f'"{c.name}"' for c in table.primary_key.columns)
        await session.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        await session.execute(
            text(
                f'ALTER TABLE "{table.name}" ADD CONSTRAINT "pk_{table.name}" '
                f"PRIMARY KEY ({columns})"
            )
        )

    async def analyze_tables(self, session: AsyncSession, tables: Sequence[str]) -> None:
        for name in tables:
            await session.execute(text(f'ANALYZE "{name}"'))

    async def prepare_bulk_load(self, session: AsyncSession) -> None:
        # The trigram index on `tasks.input_message` is a GIN index: by default each insert
        # merges into it through a 4 MB pending list, which dominates a large load. A large
        # pending list turns that into a few big sorted merges (measured: about half the
        # time of a 100,000-task seed); VACUUM (or autovacuum) merges what is left.
        await session.execute(text("SET LOCAL gin_pending_list_limit = '1GB'"))
        await session.execute(text("SET LOCAL work_mem = '256MB'"))

    async def drop_secondary_indexes(
        self, session: AsyncSession, tables: Sequence[str]
    ) -> list[str]:
        # One sorted build per index afterwards costs a fraction of growing 14 indexes row
        # by row (measured on 100,000 tasks in random order: 0.7 s to load plus 4 s to
        # build, against 12 s); one validation of a foreign key (a join) a fraction of
        # checking it row by row (a lookup of the task for every status event). The DROP
        # holds the tables exclusively until the load commits.
        names = {"tables": list(tables)}
        rows = (await session.execute(_SECONDARY_INDEXES, names)).all()
        foreign = (await session.execute(_FOREIGN_KEYS, names)).all()
        for table, name, _ in foreign:
            await session.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
        for name, _ in rows:
            await session.execute(text(f"DROP INDEX {name}"))
        # Indexes first: validating a foreign key then reads the tables through them.
        return [definition for _, definition in rows] + [
            f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'
            for table, name, definition in foreign
        ]

    async def rebuild_indexes(self, session: AsyncSession, definitions: Sequence[str]) -> None:
        if not definitions:
            return
        await session.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        for definition in definitions:
            await session.execute(text(definition))

    async def bulk_insert(
        self,
        session: AsyncSession,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        if not rows:
            return
        conn = await session.connection()
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        # asyncpg's COPY takes JSON columns as text.
        json_idx = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, JSON)]
        if json_idx:
            rows = [_json_as_text(row, json_idx) for row in rows]
        await driver.copy_records_to_table(table.name, records=rows, columns=list(columns))

    @property
    def copies_binary(self) -> bool:
        return True

    async def copy_binary(
        self, session: AsyncSession, table: str, columns: Sequence[str], data: Iterable[bytes]
    ) -> None:
        conn = await session.connection()
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection

        async def source() -> AsyncIterator[bytes]:
            for part in data:
                yield part

        await driver.copy_to_table(table, source=source(), columns=list(columns), format="binary")


# unnest keeps the array's order: the locks are taken in key order.
_LOCK_KEYS = text(
    "SELECT count(pg_advisory_xact_lock(CAST(:space AS integer), k)) "
    "FROM unnest(CAST(:keys AS integer[])) AS k"
)

_FOREIGN_KEYS = text(
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
    "FROM pg_constraint WHERE contype = 'f' AND conrelid = ANY(CAST(:tables AS regclass[]))"
)
_SECONDARY_INDEXES = text(
    "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) "
    "FROM pg_index i WHERE i.indrelid = ANY(CAST(:tables AS regclass[])) "
    "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
)


def _append_params(append: OutputAppend) -> dict[str, Any]:
    return {
        "task_id": append.task_id,
        "n": len(append.chunks),
        "size": append.size,
        "now": append.now,
        "cap": append.cap_bytes,
        "streams": [s for s, _ in append.chunks],
        "contents": [c for _, c in append.chunks],
    }


def _json_as_text(row: tuple[Any, ...], idx: list[int]) -> tuple[Any, ...]:
    out = list(row)
    for i in idx:
        out[i] = orjson.dumps(out[i]).decode()
    return tuple(out)


def _element_type(type_: Any) -> Any:
    """The element type of an array parameter: a type decorator's implementation."""
    impl = getattr(type_, "impl", None)
    return impl if impl is not None else type_
