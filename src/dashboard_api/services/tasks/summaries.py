"""A task summary as a list row: its columns, and who writes its document.

`summary_columns` are the row `schemas.tasks_json.summary_from_row` turns into a
`TaskSummary` document in Python. `SUMMARY_FIELDS` are the same columns with the kind of
text each is written as (`Dialect.export_line`, `Dialect.json_object`), so a database
that writes the text itself sends the export's lines and a list page's items ready made.
`summary_reader` chooses per session: on PostgreSQL a page row is one column, the
item's JSON text (orjson's bytes for the document, byte for byte: tests/tasks/
test_lean_reads.py), which the page's envelope embeds as it is; turning fifty rows of
thirty columns into documents was a third of a first page's CPU in the service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Integer, Text, func, literal_column
from sqlalchemy.ext.asyncio import AsyncSession

from dashboard_api.db.dialect import Dialect, LineField, LineKind, dialect_of
from dashboard_api.schemas.tasks import TaskSummary
from dashboard_api.schemas.tasks_json import (
    SUMMARY_COLUMNS,
    TASK_FIELDS,
    basis,
    seconds_or_none,
    summary_from_row,
    ts,
    ts_or_none,
    usd,
)
from dashboard_api.services.tasks.filters import TASKS

_T = TASKS


def summary_columns() -> tuple[ColumnElement[Any], ...]:
    """The columns of a list row (`schemas.tasks_json.summary_from_row` reads them)."""
    return (
        *(_T.c[c] for c in SUMMARY_COLUMNS),
        func.substr(_T.c.input_message, 1, 200).label("input_preview"),
        _T.c.error.is_not(None).label("has_error"),
    )


def _summary_fields() -> tuple[LineField, ...]:
    """The summary's fields, in the order of its document, as a dialect writes them: the
    list row's columns, each with the kind its conversion writes."""
    kinds: dict[Any, LineKind] = {usd: "micros", seconds_or_none: "micros", ts: "instant"}
    kinds |= {ts_or_none: "instant", bool: "flag", basis: "label"}
    converts = dict((name, convert) for name, _, convert in TASK_FIELDS)
    converts["has_error"] = bool
    fields = []
    kind: LineKind
    for name, column in zip(TaskSummary.model_fields, summary_columns(), strict=True):
        convert = converts.get(name)
        if convert is None:
            kind = "int" if isinstance(column.type, Integer) else "text"
        else:
            kind = kinds[convert]
        labels = (basis(True), basis(False)) if kind == "label" else None
        fields.append(LineField(name, column, kind, labels))
    return tuple(fields)


SUMMARY_FIELDS = _summary_fields()


@dataclass(frozen=True, slots=True, eq=False)  # compared and hashed by identity
class SummaryReader:
    """The columns a list page selects, and how one of its rows becomes its item: a
    document (a dict), or an `orjson.Fragment` of the item's JSON text."""

    columns: tuple[ColumnElement[Any], ...]
    convert: Callable[[Sequence[Any]], Any]


def _fragment(row: Sequence[Any]) -> orjson.Fragment:
    return orjson.Fragment(row[0])


# Python's documents: where the dialect does not write the JSON (SQLite), and for pages
# whose rows are read from a set gathered first (a rare q's matches: the text would be
# written for every match, not only the page's).
PYTHON_READER = SummaryReader(summary_columns(), summary_from_row)
# One reader per dialect, built once: the same column objects in every statement keep
# the statements' cached compilations (and the kept page statements) reusable.
_READERS: dict[str, SummaryReader] = {}


def summary_reader(session: AsyncSession) -> SummaryReader:
    """The reader of list pages on this session's database (see the module's text)."""
    dialect: Dialect = dialect_of(session)
    found = _READERS.get(dialect.backend)
    if found is None:
        written = dialect.json_object(SUMMARY_FIELDS)
        if written is None:
            found = PYTHON_READER
        else:
            # Its SQL text as one literal column: SQLAlchemy walks (and hashes) a
            # statement's expressions for its cache key at every execution of a new
            # statement object, and these ~300 nodes tripled that walk for a cursor page
            # (1.26 against 0.46 ms). Constants only: no bind parameter is lost.
            sql = written.compile(
                dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}
            )
            column = literal_column(str(sql), Text).label("summary_json")
            found = SummaryReader((column,), _fragment)
        _READERS[dialect.backend] = found
    return found
