"""Streaming export of task summaries (`GET /api/tasks/export`): every row a list walk
would return for the same filters and sort, in the same order, as CSV or JSON Lines.

The rows are read in keyset batches over the list's own ordering (the key of the last
row of a batch bounds the next one, as a list cursor does), each batch in a short
session of its own that is closed before the batch is written out. So the memory held is
one batch whatever the count, no transaction or cursor stays open while a slow client
reads, and a client that goes away mid-export leaves nothing behind: the generator
stops at its next step and holds no connection between steps. Like a cursor walk of the
list, a row written during the export appears in it if it sorts after the batch being
read, and every row that exists throughout appears exactly once.
"""

from __future__ import annotations

import asyncio
import csv
import io
import operator
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Row, Select, Text, and_, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import ExportFormat as ExportFormat
from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.engine import Database
from dashboard_api.db.paging import Ordering, rows_after
from dashboard_api.schemas.tasks import TaskSummary
from dashboard_api.schemas.tasks_json import summary_from_row
from dashboard_api.services.tasks import (
    ORDERINGS,
    SUMMARY_FIELDS,
    TaskFilters,
    summary_columns,
)

# Rows per keyset batch: large enough that a batch's query costs little next to writing
# its rows out, small enough to keep a batch's memory (~1 KB per row) modest.
EXPORT_BATCH = 2000
# Every field of a task summary, in the order of the list's items (the CSV header).
EXPORT_FIELDS: tuple[str, ...] = tuple(TaskSummary.model_fields)
_FIELD_VALUES = operator.itemgetter(*EXPORT_FIELDS)
_BOOLEAN_FIELDS = tuple(
    i for i, f in enumerate(EXPORT_FIELDS) if TaskSummary.model_fields[f].annotation is bool
)
MEDIA_TYPES: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/jsonl",
}


# The summary's fields as the dialect writes them into export lines.
LINE_FIELDS = SUMMARY_FIELDS


async def _keyset_rows(
    db: Database,
    *,
    filters: TaskFilters,
    sort: str,
    batch_size: int,
) -> AsyncIterator[Sequence[Row[Any]]]:
    """The list rows (`summary_columns`, then the ordering's keys) that `filters` match,
    in `sort` order, in batches of `batch_size`; each batch read in its own session,
    closed before it is yielded."""
    ordering = ORDERINGS[sort]
    n_keys = len(ordering.keys)
    direction = [k.desc() if ordering.descending else k.asc() for k in ordering.keys]
    after: tuple[Any, ...] | None = None
    while True:
        async with db.read_statements() as session:
            stmt: Select[Any] = select(*summary_columns(), *ordering.keys)
            where = filters.clauses(session)
            if after is not None:
                where.append(rows_after(ordering, after))
            if where:
                stmt = stmt.where(and_(*where))
            stmt = stmt.order_by(*direction).limit(batch_size)
            rows = (await session.execute(stmt)).all()
        if not rows:
            return
        yield rows
        if len(rows) < batch_size:
            return
        after = tuple(rows[-1][-n_keys:])


async def summary_batches(
    db: Database,
    *,
    filters: TaskFilters,
    sort: str,
    batch_size: int = EXPORT_BATCH,
) -> AsyncIterator[list[dict[str, Any]]]:
    """The summaries `filters` match in `sort` order, in batches of `batch_size` (as the
    list's items); each batch read in its own session, closed before it is yielded."""
    async for rows in _keyset_rows(db, filters=filters, sort=sort, batch_size=batch_size):
        yield [summary_from_row(r) for r in rows]


def _batch_statement(
    session: AsyncSession,
    line: ColumnElement[str],
    *,
    filters: TaskFilters,
    ordering: Ordering,
    after: tuple[Any, ...] | None,
    batch_size: int,
) -> Select[Any]:
    """One keyset batch as one row: its lines joined in order (`Dialect.joined_text`),
    their count, and the ordering's keys of its last row when the batch is full (the
    bound of the next one)."""

    def ordered(keys: Sequence[Any]) -> list[ColumnElement[Any]]:
        return [k.desc() if ordering.descending else k.asc() for k in keys]

    labels = [k.label(f"key{i}") for i, k in enumerate(ordering.keys)]
    lines_columns: list[ColumnElement[Any]] = [line.label("line"), *labels]
    stmt: Select[Any] = select(*lines_columns)
    where = filters.clauses(session)
    if after is not None:
        where.append(rows_after(ordering, after))
    if where:
        stmt = stmt.where(and_(*where))
    lines = stmt.order_by(*ordered(ordering.keys)).limit(batch_size).subquery("lines")
    keys = [lines.c[k.name] for k in labels]
    # The row's place in the batch: the aggregate's order, and what finds the last row.
    # A window over the batch's rows once read (their order: no sort), so that it keeps
    # the lines and keys only, not the table's rows.
    place = func.row_number().over(order_by=ordered(keys)).label("place")
    placed: list[ColumnElement[Any]] = [lines.c.line, *keys, place]
    batch = select(*placed).subquery("batch")
    last = batch.c.place == batch_size
    row: list[ColumnElement[Any]] = [
        dialect_of(session).joined_text(batch.c.line, batch.c.place),
        func.count(),
        *(func.max(batch.c[k.name]).filter(last) for k in labels),
    ]
    return select(*row)


# The dialect's export line per (backend, format), compiled once into SQL text: the line
# is ~500 expression nodes, and a statement rebuilt per batch has its cache key (a walk of
# every node) computed on each execution, text only once.
_LINE_SQL: dict[tuple[str, ExportFormat], ColumnElement[str] | None] = {}


def _line_sql(session: AsyncSession, format_: ExportFormat) -> ColumnElement[str] | None:
    dialect = dialect_of(session)
    key = (dialect.backend, format_)
    if key not in _LINE_SQL:
        line = dialect.export_line(LINE_FIELDS, format_)
        if line is not None:
            # Compiled for the engine's own dialect, its few parameters (the preview's
            # bounds) written in as constants: the text is the statement it would be.
            sql = line.compile(
                dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}
            )
            line = literal_column(f"({sql})", Text)
        _LINE_SQL[key] = line
    return _LINE_SQL[key]


async def _line_batches(
    db: Database, *, filters: TaskFilters, sort: str, format_: ExportFormat, batch_size: int
) -> AsyncIterator[tuple[int, bytes]] | None:
    """Where the database writes the lines (`Dialect.export_line`) and joins them
    (`Dialect.joined_text`): (rows, bytes) of each batch, as `csv_rows`/`jsonl_rows`
    would write them, read as one row per batch (thousands of rows per round trip, no
    row decoded or joined here); None where it does not."""
    ordering = ORDERINGS[sort]
    async with db.read_statements() as session:
        line = _line_sql(session, format_)
    if line is None:
        return None
    expr = line

    async def read(after: tuple[Any, ...] | None) -> tuple[str | None, int, tuple[Any, ...]]:
        async with db.read_statements() as session:
            stmt = _batch_statement(
                session,
                expr,
                filters=filters,
                ordering=ordering,
                after=after,
                batch_size=batch_size,
            )
            text, count, *last = (await session.execute(stmt)).one()
        return text, count, tuple(last)

    async def batches() -> AsyncIterator[tuple[int, bytes]]:
        # One batch read ahead: the database writes batch n+1 while the server and the
        # client move batch n (its bound is the last row of batch n). A client that
        # leaves cancels the read ahead, and nothing is read after it.
        ahead: asyncio.Task[tuple[str | None, int, tuple[Any, ...]]] | None
        ahead = asyncio.create_task(read(None))
        try:
            while ahead is not None:
                text, count, last = await ahead
                ahead = asyncio.create_task(read(last)) if count == batch_size else None
                if count:
                    assert text is not None
                    yield count, text.encode()
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.wait([ahead])
                if not ahead.cancelled():
                    ahead.exception()  # retrieved: the export ended first, for its own reason

    return batches()


def csv_header() -> bytes:
    return _csv_lines([list(EXPORT_FIELDS)])


def csv_rows(docs: Sequence[dict[str, Any]]) -> bytes:
    """RFC 4180 lines (CRLF; fields with commas, quotes or line breaks quoted); null is an
    empty field (the csv module writes None so), booleans `true`/`false` as in JSON."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for doc in docs:
        values = list(_FIELD_VALUES(doc))
        for i in _BOOLEAN_FIELDS:
            values[i] = "true" if values[i] else "false"
        writer.writerow(values)
    return out.getvalue().encode()


def jsonl_rows(docs: Sequence[dict[str, Any]]) -> bytes:
    """One JSON object per line, each the list item of the same task."""
    return b"".join(orjson.dumps(d) + b"\n" for d in docs)


def _csv_lines(rows: Sequence[Sequence[Any]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


async def export_body(
    db: Database,
    *,
    filters: TaskFilters,
    sort: str,
    format_: ExportFormat,
    batch_size: int = EXPORT_BATCH,
    on_rows: Callable[[int], None] | None = None,
    python_writer: bool = False,
) -> AsyncIterator[bytes]:
    """The export document, a piece per batch (the CSV header first); `on_rows` hears how
    many rows each batch read. Where the dialect writes the lines (PostgreSQL) the rows
    arrive as text and are forwarded; elsewhere, or with `python_writer`, they are read
    as summaries and written here (the two agree byte for byte)."""
    if format_ == "csv":
        yield csv_header()
    written = await _line_batches(
        db, filters=filters, sort=sort, format_=format_, batch_size=batch_size
    )
    if written is not None and not python_writer:
        async for count, data in written:
            if on_rows is not None:
                on_rows(count)
            yield data
        return
    encode = csv_rows if format_ == "csv" else jsonl_rows
    async for docs in summary_batches(db, filters=filters, sort=sort, batch_size=batch_size):
        if on_rows is not None:
            on_rows(len(docs))
        yield encode(docs)
