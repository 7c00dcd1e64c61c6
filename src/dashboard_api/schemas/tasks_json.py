"""Task documents from database rows, written straight to JSON bytes.

The Pydantic models in `schemas.tasks` stay the contract (OpenAPI `response_model`); they
are built from these documents (`task_summary`, `task_public`), and the hot paths write
the documents with orjson instead: building fifty models per list page and serializing
them again cost more CPU than the queries. `TASK_FIELDS` is the one statement of which
column becomes which field; tests/tasks/test_wire.py checks every path against the
models' JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from dashboard_api.db.paging import PageResult
from dashboard_api.timeutil import format_ts

_MICROS = 1_000_000


def ts(value: datetime) -> str:
    """`format_ts`, faster for the common case (a UTC datetime from the database)."""
    # isoformat truncates to milliseconds like format_ts; years before 1000 differ
    # (strftime does not pad them), so those take the reference path.
    if value.tzinfo is UTC and value.year >= 1000:
        return value.isoformat(timespec="milliseconds")[:-6] + "Z"
    return format_ts(value)


def ts_or_none(value: datetime | None) -> str | None:
    return None if value is None else ts(value)


def usd(micros: int) -> float:
    """`money.micros_to_usd`: int / int true division is correctly rounded too."""
    return micros / _MICROS


def seconds_or_none(micros: int | None) -> float | None:
    return None if micros is None else micros / _MICROS


def basis(cost_reported: bool) -> str:
    return "reported" if cost_reported else "computed"


# The fields every task document starts with, in the models' order (`_TaskFields` in
# `schemas.tasks`): (field, column or attribute, conversion of its value, None when the
# value is the field's). The one statement of how a task row becomes a document: the
# list rows, the whole task and the models (`task_summary`, `task_public`) all read it.
TASK_FIELDS: tuple[tuple[str, str, Callable[[Any], Any] | None], ...] = (
    ("task_id", "task_id", None),
    ("status", "status", None),
    ("agent_type", "agent_type", None),
    ("assigned_agent", "assigned_agent", None),
    ("source", "source", None),
    ("user_id", "user_id", None),
    ("conversation_id", "conversation_id", None),
    ("parent_task_id", "parent_task_id", None),
    ("flow_id", "flow_id", None),
    ("model", "model", None),
    ("cost_usd", "cost_micros", usd),
    ("cost_basis", "cost_reported", basis),
    ("input_tokens", "input_tokens", None),
    ("output_tokens", "output_tokens", None),
    ("cache_read_tokens", "cache_read_tokens", None),
    ("cache_write_tokens", "cache_write_tokens", None),
    ("duration_seconds", "duration_us", seconds_or_none),
    ("created_at", "created_at", ts),
    ("started_at", "started_at", ts_or_none),
    ("completed_at", "completed_at", ts_or_none),
    ("updated_at", "updated_at", ts),
    ("cancel_requested", "cancel_requested", bool),
    ("output_seq", "output_seq", None),
    ("output_truncated", "output_truncated", bool),
    ("lease_expires_at", "lease_expires_at", ts_or_none),
    ("failure_reason", "failure_reason", None),
    ("attempt", "attempt", None),
    ("max_attempts", "max_attempts", None),
    ("retry_of", "retry_of", None),
    ("retry_task_id", "retry_task_id", None),
)
# Columns of a list row, in this order, then input_preview and has_error (the list query
# selects exactly these).
SUMMARY_COLUMNS = tuple(column for _, column, _ in TASK_FIELDS)


def _positional(
    fields: Sequence[tuple[str, int, Callable[[Any], Any] | None]], doc: str
) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """A function of a row to a document, written out as one dict display from
    (field, position in the row, conversion or None): a page has fifty rows, and a loop
    over the fields with a call for each conversion cost a third more. The conversions
    stay the functions TASK_FIELDS names; only the trivial ones are written inline, as
    they are defined above. A timestamp equal to the one before it in the row (a
    finished task's updated_at is its completed_at) reuses that one's text."""
    inline: dict[Callable[[Any], Any], str] = {
        usd: "{v} / _MICROS",
        seconds_or_none: "(None if {v} is None else {v} / _MICROS)",
        basis: '("reported" if {v} else "computed")',
    }
    scope: dict[str, Any] = {"_MICROS": _MICROS, "ts": ts}
    items = []
    before: int | None = None  # the position of the previous timestamp
    for name, position, convert in fields:
        value = f"r[{position}]"
        if convert in (ts, ts_or_none):
            text = f"ts({value})"
            if before is not None:
                # Equal instants have the same text; None never equals a datetime.
                text = f"(t{before} if {value} == r[{before}] else {text})"
            if convert is ts_or_none:
                text = f"(None if {value} is None else {text})"
            value, before = f"(t{position} := {text})", position
        elif convert in inline:
            value = inline[convert].format(v=value)
        elif convert is not None:
            scope[f"c{position}"] = convert
            value = f"c{position}({value})"
        items.append(f"{name!r}: {value}")
    source = "def converted(r):\n    return {" + ", ".join(items) + "}\n"
    exec(compile(source, "<tasks_json>", "exec"), scope)  # noqa: S102 (our own text)
    converter: Callable[[Sequence[Any]], dict[str, Any]] = scope["converted"]
    converter.__doc__ = doc
    return converter


# A `TaskSummary` document from a list row: SUMMARY_COLUMNS, input_preview, has_error (the
# row may carry more columns after these: the page's total and order keys).
summary_from_row = _positional(
    (
        *((name, i, convert) for i, (name, _, convert) in enumerate(TASK_FIELDS)),
        ("input_preview", len(TASK_FIELDS), None),
        ("has_error", len(TASK_FIELDS) + 1, bool),
    ),
    "A `TaskSummary` document from a list row (SUMMARY_COLUMNS, input_preview, has_error).",
)


def public_row_converter(names: Sequence[str]) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """`public_doc` for rows of these columns (by name; metadata as `metadata_`), read by
    position."""
    at = {name: i for i, name in enumerate(names)}
    fields = (*TASK_FIELDS, *((f, f, None) for f in ("input_message", "result", "error")))
    return _positional(
        (
            *((name, at[attr], convert) for name, attr, convert in fields),
            ("metadata", at["metadata_"], None),
        ),
        "A `TaskPublic` document from a whole task row.",
    )


# The same fields with their timestamps left as datetimes: what the models are built
# from (they write timestamps themselves; text of a year before 1000 would not parse).
_MODEL_FIELDS = tuple(
    (name, attr, None if convert in (ts, ts_or_none) else convert)
    for name, attr, convert in TASK_FIELDS
)


def _task_doc(t: Any, timestamps_as_text: bool) -> dict[str, Any]:
    """The fields every task document starts with, from a `Task` (or its attributes)."""
    return {
        name: getattr(t, attr) if convert is None else convert(getattr(t, attr))
        for name, attr, convert in (TASK_FIELDS if timestamps_as_text else _MODEL_FIELDS)
    }


def summary_doc(
    t: Any,
    *,
    input_preview: str | None = None,
    has_error: bool | None = None,
    timestamps_as_text: bool = True,
) -> dict[str, Any]:
    """A `TaskSummary` document from a `Task` (or its attributes); the preview and
    has_error from its input and error unless given."""
    doc = _task_doc(t, timestamps_as_text)
    doc["input_preview"] = input_preview if input_preview is not None else t.input_message[:200]
    doc["has_error"] = has_error if has_error is not None else t.error is not None
    return doc


def public_doc(t: Any, *, timestamps_as_text: bool = True) -> dict[str, Any]:
    """A `TaskPublic` document from a `Task` row (or anything with its attributes)."""
    doc = _task_doc(t, timestamps_as_text)
    doc["input_message"] = t.input_message
    doc["result"] = t.result
    doc["error"] = t.error
    doc["metadata"] = t.metadata_
    return doc


def page_json(result: PageResult[Any]) -> bytes:
    """The list envelope (docs/api.md §1) of one page of documents (or of their JSON
    text as `orjson.Fragment`s, which orjson writes as they are)."""
    return orjson.dumps(
        {
            "items": result.items,
            "total": result.total,
            "page": result.page,
            "per_page": result.per_page,
            "pages": result.pages,
            "next_cursor": result.next_cursor,
        }
    )


def dumps(doc: Any, reference: Callable[[], bytes]) -> bytes:
    """orjson's bytes for `doc`; `reference()` (the Pydantic path) for what orjson refuses.

    Task metadata is free-form JSON: integers past 64 bits are valid there, and only
    the reference path can write them.
    """
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return reference()
