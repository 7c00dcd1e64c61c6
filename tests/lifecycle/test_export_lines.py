"""The export's two writers agree byte for byte: PostgreSQL writes each line in SQL
(`Dialect.export_line`) and the server forwards the text; elsewhere (and with
`python_writer`) the rows are read as summaries and written by the csv module and
orjson. Hypothesis over every kind of value a summary field takes: text that needs
quoting or escaping, null and empty text, costs and durations of every magnitude,
instants of any year and microsecond, flags."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete, select

from dashboard_api.db.dialect import dialect_of
from dashboard_api.db.models import Task
from dashboard_api.services.task_export import EXPORT_FIELDS, LINE_FIELDS, export_body
from dashboard_api.services.tasks import ORDERINGS, TaskFilters
from tests.support.env import Backend
from tests.support.summary_values import datasets, instants, micros, tasks


async def exported(
    app: FastAPI,
    fmt: str,
    *,
    python_writer: bool,
    sort: str = "created_at",
    batch_size: int = 3,
    filters: TaskFilters | None = None,
) -> bytes:
    pieces = export_body(
        app.state.ctx.db,
        filters=filters or TaskFilters(),
        sort=sort,
        format_=fmt,  # type: ignore[arg-type]
        batch_size=batch_size,
        python_writer=python_writer,
    )
    return b"".join([p async for p in pieces])


async def store(app: FastAPI, rows: list[dict[str, Any]]) -> None:
    async with app.state.ctx.db.write() as session:
        await session.execute(delete(Task))
        for row in rows:
            session.add(Task(**row))


@given(rows=datasets())
async def test_the_database_writes_the_lines_python_writes(
    app: FastAPI, backend: Backend, rows: list[dict[str, Any]]
) -> None:
    await store(app, rows)
    for fmt in ("csv", "jsonl"):
        reference = await exported(app, fmt, python_writer=True)
        assert reference.count(b"\n") >= len(rows) + (fmt == "csv")
        written = await exported(app, fmt, python_writer=False)
        pairs = enumerate(zip(written, reference, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), None)
        around = slice(max(0, (at or 0) - 60), (at or 0) + 40)
        assert written == reference, (fmt, at, written[around], reference[around])


def test_the_line_fields_are_the_summary_fields() -> None:
    from dashboard_api.services.task_export import LINE_FIELDS

    assert tuple(f.name for f in LINE_FIELDS) == EXPORT_FIELDS


# A few creation times, costs and durations shared by several rows: ties in the first
# sort key, where the batches' bounds fall back on the task id.
_SHARED_INSTANTS = st.sampled_from(
    [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)]
)


@st.composite
def tied_datasets(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = []
    for i in range(draw(st.integers(min_value=0, max_value=9))):
        row = draw(tasks(i))
        row["created_at"] = draw(st.one_of(_SHARED_INSTANTS, instants))
        row["cost_micros"] = draw(st.one_of(st.sampled_from([0, 5]), micros))
        row["duration_us"] = draw(st.one_of(st.none(), st.sampled_from([0, 7]), micros))
        rows.append(row)
    return rows


async def lines_row_by_row(app: FastAPI, fmt: str, sort: str) -> bytes:
    """The export as one line per result row (`Dialect.export_line` in a single ordered
    statement, joined here): what the batches must add up to."""
    ordering = ORDERINGS[sort]
    direction = [k.desc() if ordering.descending else k.asc() for k in ordering.keys]
    async with app.state.ctx.db.read() as session:
        line = dialect_of(session).export_line(LINE_FIELDS, fmt)  # type: ignore[arg-type]
        assert line is not None
        rows = (await session.execute(select(line).order_by(*direction))).scalars().all()
    header = ",".join(EXPORT_FIELDS) + "\r\n" if fmt == "csv" else ""
    return (header + "".join(rows)).encode()


@given(rows=tied_datasets(), sort=st.sampled_from(sorted(ORDERINGS)))
async def test_the_joined_batches_are_the_lines_row_by_row(
    app: FastAPI, backend: Backend, rows: list[dict[str, Any]], sort: str
) -> None:
    """The database joins each keyset batch's lines into one value (one row per batch)
    and gives the last row's keys as the next bound: whatever the batch size, the export
    is the per-row lines of the whole order, byte for byte."""
    if backend.name == "sqlite":
        pytest.skip("SQLite's export lines are written in Python")
    await store(app, rows)
    for fmt in ("csv", "jsonl"):
        expected = await lines_row_by_row(app, fmt, sort)
        for batch_size in sorted({1, 2, 3, max(len(rows), 1), len(rows) + 1}):
            written = await exported(
                app, fmt, python_writer=False, sort=sort, batch_size=batch_size
            )
            assert written == expected, (fmt, sort, batch_size)
