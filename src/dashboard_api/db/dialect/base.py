"""What the service needs of a database backend: the `Dialect` every backend implements.

A `Database` chooses its dialect once, from its URL (`dialect_for_url`), and hands it
to every session it makes (`dialect_of(session)`). Code above `db/` asks the dialect
for a statement, a clause or an operation, never which backend it talks to: each
difference between PostgreSQL and SQLite is one method here, written twice
(`postgresql.py`, `sqlite.py`). A few answers are capabilities (`reuses_cte_results`,
`binds_arrays`, ...) that a caller uses to pick between two plans of its own; each says
why the plans differ.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, Table, TextClause, and_, insert, or_
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import QueryableAttribute

from dashboard_api.db.dialect.locks import NamedLocks

Column = ColumnElement[Any] | QueryableAttribute[Any]

# The execution option `Database.write` sets on its connection: SQLite's BEGIN takes the
# write lock up front for it (BEGIN IMMEDIATE).
WRITE_OPTION = "dashboard_write"


@dataclass(frozen=True, slots=True)
class OutputAppend:
    """One common append of output chunks to a task (services/tasks/output.py): a task
    not ended, that has output already and room for every chunk. The UPDATE of the task
    row both takes its lock and moves its seq counter, so concurrent appends still get
    contiguous, gap-free seqs in commit order; a running task's lease is renewed only
    when less than half of it is left (services/leases.py), so that the append otherwise
    stays the write it is."""

    tasks: Table
    chunks_table: Table
    task_id: str
    chunks: Sequence[tuple[str, str]]  # (stream, content)
    size: int  # bytes of all the contents
    now: datetime
    cap_bytes: int
    returning: tuple[Any, ...]  # the task columns the row answered holds
    # The lease end a renewal sets from the task's row (lease_expires_at, lease_seconds),
    # None to keep it: for a backend that cannot compute it in the statement.
    renewal: Callable[[Any], datetime | None]
    # Only for a task that no row of this table (conversation memberships) names, nor its
    # conversation_id: the append that needs no task-write hook (`append_alone`).
    unless_member_of: Table | None = None


class DatabaseFault(Enum):
    """What a driver error says about the database, whatever the request was: the answer
    the app gives for it (app.py's handlers) depends on this, not on the backend."""

    # The server cannot take work now (down, refusing connections, out of resources,
    # starting or stopping): 503, and the service recovers when it does.
    UNAVAILABLE = "unavailable"
    # The transaction was aborted to resolve contention (serialization failure,
    # deadlock, lock not available): nothing was written, the client may retry: 503.
    CONTENTION = "contention"
    # Text the database cannot store (a NUL byte, an untranslatable character): the
    # client's mistake, whichever field carried it: 422.
    UNSTORABLE_TEXT = "unstorable_text"


ExportFormat = Literal["csv", "jsonl"]
LineKind = Literal["text", "int", "micros", "instant", "flag", "label"]


@dataclass(frozen=True, slots=True)
class LineField:
    """One field of an export line (services/task_export.py) and how it is written:
    `text` and `int` as they are, `micros` an integer count of millionths written as
    the float it divides to, `instant` as `schemas.tasks_json.ts`, `flag` a boolean as
    true/false, `label` a boolean choosing `labels[0]` (true) or `labels[1]` as text."""

    name: str
    column: ColumnElement[Any]
    kind: LineKind
    labels: tuple[str, str] | None = None


class Dialect(ABC):
    """One backend's way of doing what differs between PostgreSQL and SQLite."""

    # Which backend this is (its SQLAlchemy dialect name), for reports such as
    # /api/status: behaviour asks the dialect's methods, never this.
    backend: Literal["postgresql", "sqlite"]

    # --- the engine and its sessions ------------------------------------------------------

    @abstractmethod
    def engine_options(self, *, pool_size: int, command_timeout: float | None) -> dict[str, Any]:
        """The keyword arguments of `create_async_engine` for this backend."""

    def generic_plan_engine_options(
        self, *, pool_size: int, command_timeout: float | None
    ) -> dict[str, Any] | None:
        """The keyword arguments of a second engine whose connections run prepared
        statements on generic plans (`Database.read_generic`), or None where the backend
        keeps no plans across executions worth forcing (the reads use the main engine)."""
        return None

    @abstractmethod
    def install(
        self, engine: AsyncEngine, *, cache_mb: int | None = None, mmap_mb: int | None = None
    ) -> None:
        """Set up the engine's connections (pragmas, functions, pool checks); `cache_mb`
        and `mmap_mb` size an embedded database's page cache and memory map."""

    @abstractmethod
    def classify_error(self, driver_error: BaseException | None) -> DatabaseFault | None:
        """What the driver's own exception (a `DBAPIError`'s `orig`) says about the
        database, or None for an error of the statement itself (a bug: 500)."""

    @property
    @abstractmethod
    def serializes_writers(self) -> bool:
        """Whether one writer at a time is all the backend takes, so that `Database.write`
        queues writers in the process (SQLite: one file, one process, one writer), and row
        locks are not needed for what that order guarantees already."""

    @property
    @abstractmethod
    def writes_alone(self) -> bool:
        """Whether single-statement writes may run outside a transaction, each committing
        on its own (`Database.alone`)."""

    @property
    @abstractmethod
    def reads_in_autocommit(self) -> bool:
        """Whether reads that need no shared snapshot run without BEGIN and ROLLBACK
        (`Database.read_statements`): the same answers under READ COMMITTED, two round
        trips fewer."""

    @abstractmethod
    def database_file(self, url: str) -> str | None:
        """The file an embedded database lives in (as the URL names it), None for a server
        or a database in memory."""

    @abstractmethod
    def check_server_version(self, version: tuple[int | str, ...] | None) -> None:
        """Refuse (with the reason) a server older than the service needs."""

    @abstractmethod
    def bind_timestamp(self, value: datetime) -> datetime:
        """An aware UTC instant in the form this backend stores (db/base.UTCDateTime)."""

    @abstractmethod
    def reads_utc_timestamps(self, driver: str) -> bool:
        """Whether this driver (SQLAlchemy's name of it) reads a stored instant as an aware
        datetime in `datetime.UTC` already, or else naive (in UTC): db/base.UTCDateTime
        then only attaches UTC to the naive ones."""

    @abstractmethod
    def exclusive_locks(
        self, url: str, *, owner: object, timeout: float, key: Callable[[str], int], what: str
    ) -> NamedLocks:
        """Locks by name (`key` maps a name to a 64-bit lock key), held until released or
        the holder is gone, that one process among all that share the database holds at a
        time: who leads a periodic job. `owner` stands for a database kept in memory."""

    # --- statements and clauses -------------------------------------------------------------

    @abstractmethod
    def insert(self, table: Table) -> Any:
        """An INSERT that supports `.on_conflict_do_update` / `.on_conflict_do_nothing`."""

    @abstractmethod
    def lock_for_update(self, stmt: Select[Any]) -> Select[Any]:
        """Row-lock the selected rows until commit (none needed where writers are serialized)."""

    @abstractmethod
    def lock_skip_locked(self, stmt: Select[Any]) -> Select[Any]:
        """Row-lock the selected rows, skipping those other transactions hold."""

    @property
    @abstractmethod
    def reuses_cte_results(self) -> bool:
        """Whether a CTE referenced several times is computed once (PostgreSQL materializes
        it). SQLite evaluates it again at every reference: ~10x the time for the deep-page
        seek's descent (100+ ms a page even on a small database), while walking its index
        with OFFSET is cheap at the sizes one embedded process holds."""

    @property
    @abstractmethod
    def indexes_substrings(self) -> bool:
        """Whether `contains_ci` searches run on an index (PostgreSQL's trigram GIN), so
        that a second scan of a rare substring's matches is cheap; on SQLite every scan
        reads the whole table."""

    @property
    @abstractmethod
    def binds_arrays(self) -> bool:
        """Whether a list of values travels as one array parameter, so that a statement
        over any number of values is built (and planned) once: `in_ints`, `in_int_pairs`,
        `bisect_bound`."""

    @abstractmethod
    def contains_ci(
        self, column: Column, needle: str, *, indexed: bool = True
    ) -> ColumnElement[bool]:
        """Case-insensitive substring match with `%` and `_` taken literally. Not `indexed`:
        a trigram index cannot serve it (PostgreSQL), for a match tested on the few rows
        another condition selects (the planner would AND the index's whole bitmap in)."""

    # --- time ---------------------------------------------------------------------------------

    @abstractmethod
    def epoch_seconds_to_ts(self, seconds: Column) -> ColumnElement[Any]:
        """The instant `seconds` (whole, since the epoch) as a value comparable with stored
        timestamps (on SQLite the stored text form without its fraction, which sorts just
        before every stored instant of that same second)."""

    @abstractmethod
    def epoch_bucket(self, column: Column, seconds: int) -> ColumnElement[int]:
        """The start (whole seconds since the epoch) of the `seconds`-long block holding a time."""

    @abstractmethod
    def hour_bin(self, column: Column) -> ColumnElement[Any]:
        """The hour holding a stored instant, as a value to GROUP BY (cheap per row); read a
        group's with `hour_bin_seconds`."""

    @abstractmethod
    def hour_bin_seconds(self, value: ColumnElement[Any]) -> ColumnElement[int]:
        """A `hour_bin` value as whole seconds since the epoch (once per group, not per row)."""

    @abstractmethod
    def micros_between(self, later: Column, earlier: Column) -> ColumnElement[int]:
        """Exact `later - earlier` in microseconds (integer arithmetic)."""

    # --- analytics ------------------------------------------------------------------------------

    @abstractmethod
    async def prepare_log_bin(self, session: AsyncSession, thresholds: Sequence[int]) -> None:
        """Make `log_bin` usable on this session's connection."""

    @abstractmethod
    def log_bin(self, value: Column, thresholds: Sequence[int]) -> ColumnElement[int]:
        """How many of the sorted `thresholds` are <= value (`bisect_right`), in SQL."""

    @abstractmethod
    def int_list_agg(self, column: Column) -> ColumnElement[Any]:
        """An aggregate of a group's integers as a list (read it with `int_list`). Two of
        them in one query list their group's rows in the same order."""

    @abstractmethod
    def bytes_list_agg(self, column: Column) -> ColumnElement[Any]:
        """An aggregate of a group's byte strings as a list (read it with `bytes_list`),
        in the order of an `int_list_agg` of the same query."""

    @abstractmethod
    def int_rows_agg(self, columns: Sequence[ColumnElement[Any]]) -> ColumnElement[str]:
        """An aggregate of a group's rows of integers as one text value (read it with
        `int_rows`): a scalar subquery can then carry a whole small table in one column."""

    @abstractmethod
    def json_rows_agg(self, columns: Sequence[ColumnElement[Any]]) -> ColumnElement[str]:
        """An aggregate of a group's rows as one JSON array of arrays (text); timestamps
        come as ISO text or as stored: read them with `to_utc(fromisoformat)`."""

    @abstractmethod
    def export_line(
        self, fields: Sequence[LineField], fmt: ExportFormat
    ) -> ColumnElement[str] | None:
        """One text value per row: the row as the export's Python writer writes it, byte
        for byte (a CSV line with CRLF, or a JSON object and LF), so that the server only
        forwards the text; None where the backend does not (the caller writes the rows)."""

    @abstractmethod
    def joined_text(
        self, value: ColumnElement[str], order: ColumnElement[Any]
    ) -> ColumnElement[str]:
        """An aggregate joining a group's text values in `order`, with no separator: the
        export reads a batch of lines as one value. Only where `export_line` writes them."""

    @abstractmethod
    def json_object(self, fields: Sequence[LineField]) -> ColumnElement[str] | None:
        """One text value per row: the row's JSON object as orjson writes the document of
        `fields` (kinds as for `export_line`), byte for byte, so that a list page's items
        need no work per row in Python; None where the backend does not."""

    @abstractmethod
    def in_ints(self, column: Column, values: Sequence[int]) -> ColumnElement[bool]:
        """`column IN values` (one array parameter where `binds_arrays`: one cached plan,
        and no thousands of bind parameters to render and send)."""

    @abstractmethod
    def in_bound_ints(self, column: Column, name: str) -> ColumnElement[bool]:
        """`column IN` the list of integers bound to `name` at execution: one array
        parameter where `binds_arrays` (the statement's text is not rendered again per
        execution, as an expanding IN's is), an expanding IN elsewhere."""

    @abstractmethod
    def in_strings(self, column: Column, name: str) -> ColumnElement[bool]:
        """`column IN` the list of strings bound to `name` at execution: one array
        parameter where `binds_arrays` (one statement and plan whatever the length of the
        list), an expanding IN elsewhere."""

    @abstractmethod
    def in_int_pairs(self, first: Column, second: Column, name: str) -> ColumnElement[bool]:
        """`(first, second) IN pairs` with the pairs bound at execution by
        `int_pairs_params(name, pairs)`: one statement whatever the pairs. Only where
        `binds_arrays` (elsewhere the caller writes the pairs into its statement)."""

    def keyed_or(
        self, key: Sequence[ColumnElement[bool]], alternatives: Sequence[ColumnElement[bool]]
    ) -> ColumnElement[bool]:
        """`key AND (alternatives[0] OR ...)`: the rows of a keyed table (the rollups, the
        histograms) whose leading key columns `key` selects (the series) and each
        alternative the next ones (a grain and its buckets)."""
        return and_(*key, or_(*alternatives))

    @abstractmethod
    def bisect_bound(self, value: Any, name: str, *, instants: bool = False) -> ColumnElement[int]:
        """How many of the sorted values bound at execution as `name` (epoch seconds, or
        with `instants` aware datetimes) are <= value (`bisect_right`), in SQL: one
        statement whatever the values. Only where `binds_arrays`."""

    @abstractmethod
    def rows_table(
        self, name: str, columns: Sequence[tuple[str, Any]], rows: Sequence[tuple[Any, ...]]
    ) -> tuple[Any, dict[str, Any]]:
        """A table of `rows` (columns `(name, type)`) to join in a statement, and the
        parameters that bind it. Where `binds_arrays`, one array parameter per column
        (`NAME_COLUMN`): the statement's text, and its prepared plan, are the same whatever
        the rows. Elsewhere the rows are written into the statement (at least one)."""

    @property
    @abstractmethod
    def joins_ranges_laterally(self) -> bool:
        """Whether a join of a table of ranges to the rows of an indexed column within them
        is written as a LATERAL subquery that the planner cannot flatten (PostgreSQL: as a
        plain join it cannot estimate one range per row and reads the whole table, 330 ms
        instead of 1 at 100,000 tasks). SQLite has no LATERAL, and walks the index once
        per range of a plain join anyway."""

    # --- locks ----------------------------------------------------------------------------------

    @abstractmethod
    async def lock_tables_exclusive(self, session: AsyncSession, tables: Sequence[str]) -> None:
        """Block other writers of these tables until commit."""

    @abstractmethod
    def advisory_xact_lock_sql(self, key: int) -> TextClause | None:
        """A statement that takes a lock on `key` held until the transaction ends, or None
        where `Database.write()` transactions are serialized already."""

    @abstractmethod
    def try_advisory_xact_lock_sql(self, key: int) -> TextClause | None:
        """A statement answering whether it took that lock without waiting, or None (the
        writer has it: writers are serialized)."""

    @abstractmethod
    async def lock_keys(self, session: AsyncSession, space: int, keys: Sequence[int]) -> None:
        """Hold a lock on each (space, key) until the transaction ends, taken in key order
        so that two transactions never wait for each other in a cycle (32-bit keys)."""

    # --- writes of many rows by key ---------------------------------------------------------------

    @abstractmethod
    async def insert_missing(
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        values: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Insert the rows (keys then values) whose key is not there yet; leave the others.
        An insert that meets a concurrent uncommitted insert of the same key waits for it
        and then skips the row."""

    @abstractmethod
    async def insert_missing_returning(
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        rows: Sequence[dict[str, Any]],
        constants: dict[str, Any],
    ) -> list[tuple[Any, ...]]:
        """Insert the rows (each a dict of the same columns, plus the `constants` they all
        share) whose key is not there yet; the keys of the rows inserted."""

    @abstractmethod
    async def insert_rows(
        self,
        session: AsyncSession,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        constants: dict[str, Any] | None = None,
    ) -> None:
        """Insert the rows (values of `columns`, in that order; JSON columns' as Python
        values, None a SQL NULL), each with the `constants` columns they all share, in
        one statement whatever their number, in their order."""

    @abstractmethod
    async def select_for_update_by_keys(
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        values: Sequence[str],
        key_rows: Sequence[tuple[Any, ...]],
    ) -> list[tuple[Any, ...]]:
        """The rows (keys then values) with these keys, locked until commit in the order of
        `keys`, so that writers of overlapping sets lock them in the same order."""

    @abstractmethod
    async def update_by_keys(
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        values: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Set the values of existing rows (keys then values)."""

    @abstractmethod
    async def upsert_add_many(
        self,
        session: AsyncSession,
        table: Table,
        keys: Sequence[str],
        values: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Insert rows (keys then values), or add their values to the rows already there;
        rows are applied in the given order, so callers sort them to lock shared rows in
        one order."""

    async def insert_with_rows(
        self,
        session: AsyncSession,
        table: Table,
        values: dict[str, Any],
        rows: Sequence[tuple[Table, dict[str, Any]]],
    ) -> bool:
        """Insert one row of `table` (`values`) unless its primary key exists, and only
        if it was inserted each of `rows` (a table and one row's values, in order), in
        the session's transaction; whether it was inserted.

        Here a statement per row, which costs SQLite no round trip; PostgreSQL makes
        them one statement."""
        if (await session.execute(_insert_new(self, table), values)).first() is None:
            return False
        for dependent, row in rows:
            await session.execute(_insert_into(dependent), row)
        return True

    # --- task output ------------------------------------------------------------------------------

    @abstractmethod
    async def append_output(self, session: AsyncSession, append: OutputAppend) -> Row[Any] | None:
        """Store the chunks (seqs after the task's `output_seq`) and move the task's
        counters, in the session's transaction; the task's row (`append.returning`, after
        the write), or None (nothing written) when the task is not in the common case."""

    @abstractmethod
    async def append_alone(self, conn: AsyncConnection, append: OutputAppend) -> int | None:
        """The same append as one statement that commits on its own (`Database.alone`,
        where `writes_alone`); the task's new `output_seq`, or None (nothing written)."""

    # --- maintenance and bulk loads -----------------------------------------------------------

    @abstractmethod
    async def prepare_large_sort(self, session: AsyncSession) -> None:
        """Let this transaction sort and group millions of rows in memory."""

    @abstractmethod
    async def clear_tables(self, session: AsyncSession, tables: Sequence[Table]) -> None:
        """Delete every row of the tables."""

    @abstractmethod
    async def drop_primary_key(self, session: AsyncSession, table: Table) -> bool:
        """Drop the table's primary key before a bulk insert; whether it did (put it back
        with `add_primary_key`). Building the index once over millions of sorted rows is
        about five times cheaper than growing it row by row."""

    @abstractmethod
    async def add_primary_key(self, session: AsyncSession, table: Table) -> None:
        """Put back the primary key that `drop_primary_key` dropped (same name and columns)."""

    @abstractmethod
    async def analyze_tables(self, session: AsyncSession, tables: Sequence[str]) -> None:
        """Refresh planner statistics after a bulk change."""

    @abstractmethod
    async def prepare_bulk_load(self, session: AsyncSession) -> None:
        """Tune the current transaction for loading many rows (`finish_bulk_load` after)."""

    async def finish_bulk_load(self, session: AsyncSession) -> None:
        """Undo what `prepare_bulk_load` set beyond the transaction (on success or not)."""
        return

    @abstractmethod
    async def drop_secondary_indexes(
        self, session: AsyncSession, tables: Sequence[str]
    ) -> list[str]:
        """Drop the indexes of `tables` that back no constraint, for a load that at least
        doubles a table; the statements that rebuild them (`rebuild_indexes`)."""

    @abstractmethod
    async def rebuild_indexes(self, session: AsyncSession, definitions: Sequence[str]) -> None:
        """Run the statements `drop_secondary_indexes` returned."""

    @abstractmethod
    async def bulk_insert(
        self,
        session: AsyncSession,
        table: Table,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Insert many rows fast. Values must already be in storage form (aware UTC)."""

    async def insert_driver_rows(
        self, session: AsyncSession, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
    ) -> None:
        """Insert rows whose values are already what the driver stores (no type of the
        model applied to them: see services/seed_rows.py). Where not `copies_binary`."""
        raise NotImplementedError("PostgreSQL loads with copy_binary")

    @property
    @abstractmethod
    def copies_binary(self) -> bool:
        """Whether `copy_binary` takes PostgreSQL's binary COPY data (db/pgcopy.py), which
        a loader can build far cheaper than rows for `bulk_insert`."""

    async def copy_binary(
        self, session: AsyncSession, table: str, columns: Sequence[str], data: Iterable[bytes]
    ) -> None:
        """COPY `data`'s parts (header, rows, trailer) into `table`, in the session's
        transaction."""
        raise NotImplementedError("binary COPY is PostgreSQL's")


# Built once per dialect and table (values bound at execution): `insert_with_rows`'s
# statements, which SQLAlchemy would otherwise build and key for its cache on every call.
@functools.lru_cache(maxsize=16)
def _insert_new(dialect: Dialect, table: Table) -> Any:
    key = list(table.primary_key.columns)
    return dialect.insert(table).on_conflict_do_nothing(index_elements=key).returning(*key)


@functools.lru_cache(maxsize=16)
def _insert_into(table: Table) -> Any:
    return insert(table)
